"""The asyncio client on the Redis store, with a real worker process on a Redis broker.

Waiting is by notification: one redis.asyncio pub/sub connection per event loop
subscribes to the done channel of every awaited saga (`celery_saga_redis.aio`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
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
from support import REDIS_URL, STORE_DB, drop_prefix, require

from celery_saga import SagaCompensated, SagaStatus
from celery_saga.backends.waiting import live_notifications
from celery_saga.testing import make_execution
from celery_saga_redis import RedisSagaBackend
from celery_saga_redis.aio import RedisNotifications


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """A worker process of `aio_app` on the Redis broker and a Redis store of this
    module's own; yields the same app and saga, built in this process."""
    require(REDIS_URL, 6379, "Redis")
    tag = uuid.uuid4().hex[:10]
    store = f"{REDIS_URL}/{STORE_DB}?prefix=aio-{tag}:"
    queue = f"aio-{tag}"
    process = AioWorker(broker_url(), store, queue, tmp_path_factory.mktemp("aio") / "worker.log")
    try:
        process.wait_ready()
        app, saga = make_app(broker=broker_url(), store=store, queue=queue)
        # One saga first, synchronously: connections, imports and caches of this process
        # are warm, as in a server that has been up for a moment.
        assert saga.run(order_id="warm-up", amount=1).get(timeout=60)["confirmed"] == "warm-up"
        yield app, saga
    finally:
        process.stop()
        delete_queue(queue)
        drop_prefix(REDIS_URL, STORE_DB, f"aio-{tag}:")


@pytest.mark.slow
def test_200_concurrent_arun_and_aget_never_block_the_loop(worker: tuple[Any, Any]) -> None:
    """200 sagas started with `arun` and awaited with `aget` from one event loop all
    complete, and the loop never stalls for more than 50 ms meanwhile."""
    _, saga = worker
    batch = run_batch(saga, 200)
    print("\n" + batch.report("Redis store"))
    assert [o["confirmed"] for o in batch.outputs] == [f"o-{i}" for i in range(200)]
    assert batch.lag.samples > 50
    # What a control loop in another thread suffered meanwhile is the machine's, not ours.
    assert batch.lag.excess < MAX_LOOP_LAG, batch.report("the loop stalled")


def test_watch_yields_each_step_in_order_then_the_end(worker: tuple[Any, Any]) -> None:
    """`watch()` on a real worker: the saga's status, each step running then done, in plan
    order, and last the COMPLETED status; then the iteration ends."""
    _, saga = worker

    seen, updates = watch_one(saga)
    assert seen == WATCHED_ORDER
    assert updates[-1].is_final and updates[-1].to_dict()["status"] == "completed"


def test_aget_raises_what_get_raises(worker: tuple[Any, Any]) -> None:
    """A compensated saga: `aget` raises `SagaCompensated` with the message `get` gives."""
    _, saga = worker

    async def run() -> Any:
        result = await saga.arun(order_id="c-1", amount=5, fail="confirm")
        with pytest.raises(SagaCompensated) as caught:
            await result.aget(timeout=60)
        return result, caught.value

    result, error = asyncio.run(run())
    with pytest.raises(SagaCompensated) as sync:
        result.get(timeout=5)
    assert str(error) == str(sync.value)
    assert error.execution.status is SagaStatus.COMPENSATED


def test_aget_timeout_raises_timeout_error(redis_store_url: str) -> None:
    """With no worker, `aget(timeout=...)` raises a `TimeoutError` after that long."""
    _, saga = make_app(broker=broker_url(), store=redis_store_url, queue=f"nobody-{uuid.uuid4()}")
    queue = saga.app.conf.task_default_queue
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


def test_one_connection_serves_every_waiter_of_a_loop(redis_store_url: str) -> None:
    """30 waiters on one loop share one listener: each done channel has exactly one
    subscriber while they wait, none once they are done, and the listener stops when
    nobody has waited for `linger` seconds."""
    store = RedisSagaBackend.from_url(redis_store_url)
    executions = [make_execution() for _ in range(30)]
    for execution in executions:
        store.create(execution)
    channels = [store.keys.done_channel(e.saga_id) for e in executions]

    async def subscribers() -> list[int]:
        counts = await asyncio.to_thread(store.client.pubsub_numsub, *channels)
        return [n for _, n in counts]

    async def run() -> dict[str, Any]:
        waits = [asyncio.ensure_future(store.async_wait(e.saga_id, 30)) for e in executions]
        await asyncio.sleep(0.5)
        seen: dict[str, Any] = {"listeners": list(live_notifications())}
        seen["while"] = await subscribers()
        for execution in executions:
            await asyncio.to_thread(
                store.update_saga, execution.saga_id, {"status": SagaStatus.COMPLETED}
            )
        seen["done"] = await asyncio.gather(*waits)
        await asyncio.sleep(RedisNotifications.tick * 2.5)  # idle topics are unsubscribed
        seen["after"] = await subscribers()
        await asyncio.sleep(RedisNotifications.linger + RedisNotifications.tick * 2)
        seen["alive"] = [n.alive for n in seen["listeners"]]
        return seen

    linger = RedisNotifications.linger
    RedisNotifications.linger = 0.5
    try:
        seen = asyncio.run(run())
    finally:
        RedisNotifications.linger = linger
        store.close()
    assert all(d.status is SagaStatus.COMPLETED for d in seen["done"])
    assert len(seen["listeners"]) == 1 and isinstance(seen["listeners"][0], RedisNotifications)
    assert seen["while"] == [1] * 30
    assert seen["after"] == [0] * 30
    assert seen["alive"] == [False]


def test_the_listener_copies_the_clients_connection_options(redis_store_url: str) -> None:
    """The async connection reaches the same server and database, with the client's
    credentials and timeouts, and decodes replies (what the listener relies on)."""
    from celery_saga_redis.aio import connection_options

    store = RedisSagaBackend(
        redis_client=redis.Redis.from_url(redis_store_url.split("?")[0], socket_timeout=7)
    )
    try:
        cls, options = connection_options(store)
        assert cls.__module__ == "redis.asyncio.connection" and cls.__name__ == "Connection"
        assert options["socket_timeout"] == 7 and options["decode_responses"] is True
        assert options["port"] == store.client.connection_pool.connection_kwargs["port"]
        assert options["db"] == store.client.connection_pool.connection_kwargs["db"]
    finally:
        store.close()
