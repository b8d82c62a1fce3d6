"""Recovery over a Redis store holding broken records, with a real worker on a Redis broker.

Ten executions stalled an hour ago (created, first stage never sent); two more are
broken by writing into their Redis hash with redis-py: one from a newer schema, one
whose step field is not JSON. One pass resumes the ten, reports the two (id and
reason) and exits with the documented code; `show` names the problem in one line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner
from e2e_support import broker_url, delete_queues, wait_for
from kombu.asynchronous import set_event_loop
from support import STORES

from celery_saga import Saga, SagaStatus
from celery_saga.cli import saga as saga_cli
from celery_saga.cli.commands import EXIT_SOME_ERRORS, EXIT_UNREADABLE
from celery_saga.models import SCHEMA_VERSION, now
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.recovery import recover
from celery_saga.runtime.start import new_execution

TIMEOUT = 60


#: The records are damaged through redis-py, so this runs where the Redis store is tested.
pytestmark = pytest.mark.skipif(
    "redis" not in STORES, reason="runs in the Redis store's test cell (CELERY_SAGA_TEST_STORES)"
)


@pytest.fixture
def worker_saga(redis_store_url: str, unique: str) -> Iterator[Saga]:
    """A two-step saga on a Redis store, served by a worker thread on a Redis broker."""
    broker = broker_url("redis")
    queue = f"bad-records-{unique}"
    app = Celery(f"bad-records-{unique}", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        saga_backend=redis_store_url,
        broker_connection_retry_on_startup=True,
    )

    @app.task(shared=False, name="bad_records_e2e.first")
    def first(**kwargs: Any) -> dict[str, Any]:
        return {"first": kwargs["n"]}

    @app.task(shared=False, name="bad_records_e2e.second")
    def second(**kwargs: Any) -> dict[str, Any]:
        return {"second": kwargs["first"] + 1}

    saga = (
        Saga("bad_records_e2e", app=app)
        .add_step(first, no_compensation=True)
        .add_step(second, no_compensation=True)
    )
    set_event_loop(None)  # each in-process worker needs its own event loop (see conftest)
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            queues=[queue],
            shutdown_timeout=30,
        ):
            yield saga
    finally:
        set_event_loop(None)
        delete_queues(broker, [queue])


def _stalled(saga: Saga, count: int) -> list[str]:
    """`count` PENDING executions created an hour ago whose first stage was never sent."""
    rt = Runtime.of(saga)
    ids = []
    for n in range(count):
        execution = new_execution(rt.definition, {"n": n}, None, None)
        execution.created_at = execution.updated_at = now() - 3600
        rt.backend.create(execution)
        ids.append(execution.saga_id)
    return ids


def test_recovery_resumes_ten_stalled_sagas_and_reports_two_broken_records(
    worker_saga: Saga, caplog: pytest.LogCaptureFixture
) -> None:
    saga = worker_saga
    store: Any = Runtime.of(saga).backend  # a RedisSagaBackend
    healthy = _stalled(saga, 10)
    too_new, not_json = _stalled(saga, 2)
    client, key = store.client, store.keys.execution
    header = json.loads(client.hget(key(too_new), "h"))
    client.hset(key(too_new), "h", json.dumps({**header, "schema": SCHEMA_VERSION + 1}))
    client.hset(key(not_json), "s:1", '{"index": 1, "status": ')

    with caplog.at_level(logging.ERROR, logger="celery_saga"):
        report = recover(saga.app)  # the default stalled_after: these are an hour old

    assert sorted(r.saga_id for r in report.resumed if r.acted) == sorted(healthy)
    reasons = dict(report.errors)
    assert sorted(reasons) == sorted([too_new, not_json])
    assert f"schema version {SCHEMA_VERSION + 1}" in reasons[too_new]
    assert f"saga record {not_json!r} cannot be read: JSONDecodeError" in reasons[not_json]
    logged = [r for r in caplog.records if getattr(r, "saga_id", None) in reasons]
    assert len(logged) == 2 and all(r.exc_info is None for r in logged)

    def all_completed() -> bool:
        return all(store.get(s).status is SagaStatus.COMPLETED for s in healthy)

    wait_for(all_completed, TIMEOUT, "the 10 resumed sagas to complete")
    assert store.get(healthy[3]).step(1).output == {"second": 4}
    assert client.hget(key(not_json), "s:1") == '{"index": 1, "status": '  # left untouched

    # The same pass from the command line: the two are still there, reported in --json.
    runner = CliRunner()
    obj = SimpleNamespace(app=saga.app)
    outcome = runner.invoke(saga_cli, ["recover", "--stalled-after", "0", "--json"], obj=obj)
    assert outcome.exit_code == EXIT_SOME_ERRORS, outcome.output
    data = json.loads(outcome.stdout)
    assert {e["saga_id"] for e in data["errors"]} == {too_new, not_json}
    assert data["acted"] == 0  # the ten are done; nothing is sent twice

    for saga_id, expected in ((too_new, "upgrade celery-saga-core"), (not_json, "JSONDecodeError")):
        shown = runner.invoke(saga_cli, ["show", saga_id], obj=obj)
        assert shown.exit_code == EXIT_UNREADABLE, shown.output
        assert shown.stderr.startswith(f"error: saga record {saga_id!r}")
        assert expected in shown.stderr and "Traceback" not in shown.output
