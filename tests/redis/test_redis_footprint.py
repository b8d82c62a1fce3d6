"""What a finished saga costs in Redis memory, run by a real worker.

The benchmark's footprint workload on a small scale: five-step sagas of no-op steps,
each step a Celery task run by an in-process worker on a Redis broker, measured with
``MEMORY USAGE <key> SAMPLES 0`` over every key under the store's prefix (records and
index entries alike), divided by the number of sagas. Enough sagas that the indexes
leave Redis's compact encoding for small sorted sets, as they do in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.asynchronous import set_event_loop
from support import BROKER_DB, REDIS_URL

from celery_saga import Saga
from celery_saga.config import backend_for
from celery_saga.ids import step_task_id
from celery_saga.models import SagaStatus, StepStatus
from celery_saga_redis import RedisSagaBackend
from celery_saga_redis.backend import DEFAULT_TTL

#: Finished five-step sagas measured (past the 128 members of a compact sorted set).
SAGAS = 200
#: Bytes a finished five-step saga may keep, its share of the indexes included.
BUDGET = 2500


@pytest.fixture
def five(redis_store_url: str) -> Iterator[tuple[Saga, RedisSagaBackend]]:
    """A saga of five no-op steps on an in-process worker; its store."""
    queue = f"footprint-{uuid.uuid4().hex[:8]}"
    app = Celery(f"footprint-{queue}", broker=f"{REDIS_URL}/{BROKER_DB}", set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        saga_backend=redis_store_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"polling_interval": 0.01},
    )
    saga = Saga("footprint.five", app=app)
    for n in range(1, 6):

        @app.task(name=f"footprint.noop{n}", shared=False)  # type: ignore[untyped-decorator]
        def noop(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {}

        saga.add_step(noop)
    store = backend_for(app)
    assert isinstance(store, RedisSagaBackend)
    set_event_loop(None)  # a fresh kombu hub for this worker (see tests/e2e/conftest.py)
    try:
        with start_worker(
            app, pool="threads", concurrency=4, perform_ping_check=False, queues=[queue]
        ):
            yield saga, store
    finally:
        set_event_loop(None)
        app.connection_for_write().default_channel.queue_delete(queue)


def memory_under(store: RedisSagaBackend) -> tuple[int, list[str]]:
    """The sum of ``MEMORY USAGE`` over every key under the store's prefix, and the keys."""
    keys = list(store.client.scan_iter(match=f"{store.keys.prefix}*", count=1000))
    pipe = store.client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(n or 0) for n in pipe.execute()), keys


def test_a_finished_five_step_saga_keeps_at_most_2500_bytes(
    five: tuple[Saga, RedisSagaBackend],
) -> None:
    saga, store = five
    results = [saga.run(i=i) for i in range(SAGAS)]
    for i, result in enumerate(results):
        assert result.get(timeout=120) == {"i": i}
    total, keys = memory_under(store)
    per_saga = total / SAGAS
    print(f"\nbytes per finished 5-step saga: {per_saga:.0f} ({SAGAS} sagas, {len(keys)} keys)")
    assert per_saga <= BUDGET

    # Nothing that only a running saga needs is left; every record expires in time.
    assert not [key for key in keys if key.startswith(f"{store.keys.prefix}counts:")]
    for result in results[:: SAGAS // 20]:
        assert 0 < store.client.ttl(store.keys.execution(result.saga_id)) <= DEFAULT_TTL

    # And nothing `celery saga show` displays is lost.
    execution = store.get(results[7].saga_id)
    assert execution is not None and execution.status is SagaStatus.COMPLETED
    assert execution.output == {"i": 7} and execution.finished_at is not None
    for step in execution.steps:
        assert (step.status, step.attempt, step.seq) == (StepStatus.SUCCESS, 1, 1)
        assert step.task_id == step_task_id(execution.saga_id, step.index, 1)
        assert (step.output, step.compensation_data) == ({}, {})
        assert step.worker and step.started_at is not None and step.finished_at is not None
        assert execution.created_at <= step.started_at <= step.finished_at
