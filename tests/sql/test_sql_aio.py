"""The asyncio client on the PostgreSQL store, with a real worker process on a Redis broker.

Waiting is by notification: one psycopg `AsyncConnection` per event loop LISTENs on
the store's channel for every awaited saga (`celery_saga_sql.aio`). The other SQL
databases poll; the conformance kit checks `async_wait` on each of them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aio_app import make_app
from aio_support import (
    MAX_LOOP_LAG,
    WATCHED_ORDER,
    AioWorker,
    broker_url,
    delete_queue,
    run_batch,
    watch_one,
)
from support import POSTGRES_URL, REDIS_URL, require, sql_drop_tables

from celery_saga import SagaStatus
from celery_saga.backends.waiting import live_notifications
from celery_saga.testing import make_execution
from celery_saga_sql import SQLSagaBackend
from celery_saga_sql.aio import PostgresNotifications


@pytest.fixture(scope="module")
def postgres_store() -> Iterator[str]:
    """A PostgreSQL store URL with tables of this module's own, dropped afterwards."""
    require(POSTGRES_URL, 5432, "PostgreSQL")
    prefix = f"aio{uuid.uuid4().hex[:8]}_"
    url = f"{POSTGRES_URL}?table_prefix={prefix}"
    yield url
    sql_drop_tables(url, prefix)


@pytest.fixture(scope="module")
def worker(
    postgres_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any]]:
    """A worker process of `aio_app` on the Redis broker and the PostgreSQL store;
    yields the same app and saga, built in this process."""
    require(REDIS_URL, 6379, "Redis")
    queue = f"aio-{uuid.uuid4().hex[:10]}"
    log = tmp_path_factory.mktemp("aio") / "worker.log"
    process = AioWorker(broker_url(), postgres_store, queue, log)
    try:
        process.wait_ready()
        app, saga = make_app(broker=broker_url(), store=postgres_store, queue=queue)
        # One saga first, synchronously: connections, imports and caches of this process
        # are warm, as in a server that has been up for a moment.
        assert saga.run(order_id="warm-up", amount=1).get(timeout=60)["confirmed"] == "warm-up"
        yield app, saga
    finally:
        process.stop()
        delete_queue(queue)


@pytest.mark.slow
def test_200_concurrent_arun_and_aget_never_block_the_loop(worker: tuple[Any, Any]) -> None:
    """200 sagas started with `arun` and awaited with `aget` from one event loop all
    complete, and the loop never stalls for more than 50 ms meanwhile."""
    _, saga = worker
    batch = run_batch(saga, 200)
    print("\n" + batch.report("PostgreSQL store"))
    assert [o["confirmed"] for o in batch.outputs] == [f"o-{i}" for i in range(200)]
    assert batch.lag.samples > 50
    # What a control loop in another thread suffered meanwhile is the machine's, not ours.
    assert batch.lag.excess < MAX_LOOP_LAG, batch.report("the loop stalled")


def test_watch_yields_each_step_in_order_then_the_end(worker: tuple[Any, Any]) -> None:
    """`watch()` on a real worker: the saga's status, each step running then done, in plan
    order, and last the COMPLETED status (announced by NOTIFY); then it ends."""
    _, saga = worker

    seen, updates = watch_one(saga)
    assert seen == WATCHED_ORDER
    assert updates[-1].is_final and updates[-1].to_dict()["status"] == "completed"


def test_aget_timeout_raises_timeout_error(postgres_store: str) -> None:
    """With no worker, `aget(timeout=...)` raises a `TimeoutError` after that long."""
    queue = f"nobody-{uuid.uuid4().hex[:10]}"
    _, saga = make_app(broker=broker_url(), store=postgres_store, queue=queue)
    try:

        async def run() -> float:
            result = await saga.arun(order_id="t-1", amount=5)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await result.aget(timeout=0.5)
            return time.monotonic() - started

        assert 0.45 <= asyncio.run(run()) < 5
    finally:
        delete_queue(queue)


def test_one_listen_connection_serves_every_waiter_of_a_loop(postgres_store: str) -> None:
    """30 waiters on one loop share one LISTEN connection, each woken by its own saga's
    notification: two reads each, no polling."""
    store = SQLSagaBackend.from_url(postgres_store)
    executions = [make_execution() for _ in range(30)]
    for execution in executions:
        store.create(execution)

    async def run() -> tuple[list[Any], list[Any], int]:
        before = store.stats.round_trips
        waits = [asyncio.ensure_future(store.async_wait(e.saga_id, 30)) for e in executions]
        await asyncio.sleep(0.5)
        listeners = list(live_notifications())
        for execution in executions:
            await asyncio.to_thread(
                store.update_saga, execution.saga_id, {"status": SagaStatus.COMPLETED}
            )
        done = await asyncio.gather(*waits)
        return done, listeners, store.stats.round_trips - before

    try:
        done, listeners, trips = asyncio.run(run())
    finally:
        store.close()
    assert [d.saga_id for d in done] == [e.saga_id for e in executions]
    assert all(d.status is SagaStatus.COMPLETED for d in done)
    assert len(listeners) == 1 and isinstance(listeners[0], PostgresNotifications)
    assert trips <= 3 * len(executions)  # a read before, a read after, the update
