"""The asyncio client on the memory store: polling in a thread, with a worker in a thread.

The memory store has no notification, so `async_wait` and `watch` read it at a bounded
interval, each read in a thread (`celery_saga.backends.waiting.poll_terminal`). The
listener machinery that Redis and PostgreSQL use (`Notifications`, `wait_notified`) is
tested here too, with a transport made of an asyncio queue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aio_app import make_app
from celery.contrib.testing.worker import start_worker
from kombu.asynchronous import set_event_loop

from celery_saga import (
    Saga,
    SagaCompensated,
    SagaExecution,
    SagaResult,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from celery_saga.aio import SagaUpdate, _updates, set_thread_limit
from celery_saga.backends import MemorySagaBackend
from celery_saga.backends.waiting import Notifications, notifications_for, wait_notified
from celery_saga.offload import limit
from celery_saga.testing import make_execution
from celery_saga.testing.waiting import LoopLag

#: A worker in threads of this process competes with the loop for the GIL: the bound on
#: the loop's lag is looser here than with a worker process (tests/redis, tests/sql).
MAX_LAG_WITH_A_WORKER_IN_THREADS = 0.2


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[Any, Saga, MemorySagaBackend]]:
    """A worker in threads of this process, on the in-memory broker and a memory store."""
    store = MemorySagaBackend()
    queue = f"aio-{uuid.uuid4().hex[:8]}"
    app, saga = make_app(broker="memory://", store=store, queue=queue, name="aio_memory_order")
    app.conf.broker_transport_options = {"polling_interval": 0.005}
    set_event_loop(None)  # a fresh kombu hub for this worker (see tests/e2e/conftest.py)
    try:
        with start_worker(
            app, pool="threads", concurrency=4, perform_ping_check=False, queues=[queue]
        ):
            yield app, saga, store
    finally:
        set_event_loop(None)


def _seen(updates: list[SagaUpdate]) -> list[Any]:
    return [(u.step.index, u.step.status) if u.step else u.status for u in updates]


def test_arun_and_aget_complete_by_polling(worker: tuple[Any, Saga, MemorySagaBackend]) -> None:
    """50 sagas started with `arun` and awaited with `aget` on one loop all complete; the
    store is polled in threads and the loop keeps running."""
    _, saga, _ = worker
    lag = LoopLag()

    async def one(i: int) -> Any:
        result = await saga.arun(order_id=f"m-{i}", amount=i)
        assert isinstance(result, SagaResult)
        return await result.aget(timeout=60)

    async def batch() -> list[Any]:
        return list(await asyncio.gather(*(one(i) for i in range(50))))

    outputs = asyncio.run(lag.measure(batch()))
    print(f"\nmemory store, worker in threads: max loop lag {lag.worst * 1000:.1f} ms")
    assert [o["confirmed"] for o in outputs] == [f"m-{i}" for i in range(50)]
    assert lag.excess < MAX_LAG_WITH_A_WORKER_IN_THREADS


def test_watch_yields_each_step_in_order_then_the_end(
    worker: tuple[Any, Saga, MemorySagaBackend],
) -> None:
    """`watch()`: the saga's status, each step running then done, in plan order, and last
    the COMPLETED status; then the iteration ends."""
    _, saga, _ = worker

    async def follow() -> list[SagaUpdate]:
        result = await saga.arun(order_id="w-1", amount=5, pause=0.3)
        return [update async for update in result.watch(interval=0.05)]

    updates = asyncio.run(follow())
    assert _seen(updates) == [
        SagaStatus.RUNNING,
        (0, StepStatus.RUNNING),
        (0, StepStatus.SUCCESS),
        (1, StepStatus.RUNNING),
        (1, StepStatus.SUCCESS),
        (2, StepStatus.RUNNING),
        (2, StepStatus.SUCCESS),
        SagaStatus.COMPLETED,
    ]
    assert [u.is_final for u in updates] == [False] * 7 + [True]
    assert updates[2].to_dict() == {
        "saga_id": updates[0].saga_id,
        "status": "running",
        "step": {
            "index": 0,
            "task_name": "aio.reserve",
            "kind": "task",
            "status": "success",
            "attempt": 1,
            "error": None,
            "compensation_error": None,
        },
    }


def test_watch_follows_a_compensation_in_reverse_order(
    worker: tuple[Any, Saga, MemorySagaBackend],
) -> None:
    """A saga whose last step fails: the failure, then the compensations of the steps
    before it, latest first, and last the COMPENSATED status."""
    _, saga, _ = worker

    async def follow() -> tuple[list[SagaUpdate], Any]:
        result = await saga.arun(order_id="w-2", amount=5, pause=0.1, fail="confirm")
        updates = [update async for update in result.watch(interval=0.02)]
        with pytest.raises(SagaCompensated) as caught:
            await result.aget(timeout=5)
        return updates, caught.value

    updates, error = asyncio.run(follow())
    seen = _seen(updates)
    assert seen[-1] is SagaStatus.COMPENSATED
    failed = seen.index((2, StepStatus.FAILED))
    undone = [s for s in seen if isinstance(s, tuple) and s[1] is StepStatus.COMPENSATED]
    assert undone == [(1, StepStatus.COMPENSATED), (0, StepStatus.COMPENSATED)]
    assert failed < seen.index((1, StepStatus.COMPENSATED))
    assert "confirm refused order w-2" in str(error)


def test_aget_raises_what_get_raises(worker: tuple[Any, Saga, MemorySagaBackend]) -> None:
    """A compensated saga: `aget` raises `SagaCompensated` with the message `get` gives,
    the execution attached."""
    _, saga, _ = worker

    async def run() -> tuple[SagaResult, SagaCompensated]:
        result = await saga.arun(order_id="c-1", amount=5, fail="charge")
        with pytest.raises(SagaCompensated) as caught:
            await result.aget(timeout=30)
        return result, caught.value

    result, error = asyncio.run(run())
    with pytest.raises(SagaCompensated) as sync:
        result.get(timeout=5)
    assert str(error) == str(sync.value)
    assert error.execution.status is SagaStatus.COMPENSATED


def test_aget_timeout_raises_the_timeout_error_get_raises(
    worker: tuple[Any, Saga, MemorySagaBackend],
) -> None:
    """`aget(timeout=...)` on a saga still running raises a `TimeoutError` (the same type
    as `get`) after about that long; the saga goes on and can be awaited again."""
    _, saga, _ = worker

    async def run() -> tuple[SagaResult, BaseException, float]:
        result = await saga.arun(order_id="t-1", amount=5, pause=0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await result.aget(timeout=0.3)
        return result, caught.value, time.monotonic() - started

    result, error, waited = asyncio.run(run())
    assert 0.25 <= waited < 3
    with pytest.raises(TimeoutError) as sync:
        result.get(timeout=0.01)
    assert type(error) is type(sync.value)
    assert asyncio.run(result.aget(timeout=30))["confirmed"] == "t-1"


def test_arun_with_an_idempotency_key_returns_the_first_execution(
    worker: tuple[Any, Saga, MemorySagaBackend],
) -> None:
    """Two `arun` calls with one idempotency key start one execution."""
    _, saga, _ = worker

    async def run() -> tuple[SagaResult, SagaResult]:
        first = await saga.arun(order_id="i-1", amount=5, idempotency_key="aio-i-1")
        second = await saga.arun(order_id="i-1", amount=5, idempotency_key="aio-i-1")
        await first.aget(timeout=30)
        return first, second

    first, second = asyncio.run(run())
    assert first.saga_id == second.saga_id


def test_an_unknown_saga(worker: tuple[Any, Saga, MemorySagaBackend]) -> None:
    """`aget` on an id the store does not have raises `LookupError` (as `get` does) once
    the timeout passes; `watch` raises it at once."""
    _, saga, _ = worker
    result = saga.result(str(uuid.uuid4()))

    async def run() -> None:
        with pytest.raises(LookupError, match="does not exist"):
            await result.aget(timeout=0.2)
        with pytest.raises(LookupError, match="does not exist"):
            async for _ in result.watch():
                pass

    asyncio.run(run())


def test_watch_interval_must_be_positive() -> None:
    """`watch(interval=0)` is refused with a message that gives the value."""
    result = SagaResult(str(uuid.uuid4()), MemorySagaBackend())

    async def run() -> None:
        with pytest.raises(ValueError, match="positive number of seconds, got 0"):
            async for _ in result.watch(interval=0):
                pass

    asyncio.run(run())


def test_updates_of_one_read_come_in_the_order_they_happened() -> None:
    """Steps that changed between two reads are reported oldest change first; the first
    read of an active saga starts with its status, later ones (and the first read of a
    finished saga) end with it when it changed: the terminal status is always last."""
    execution = make_execution(steps=3)
    seen: dict[int, Any] = {}
    first = _updates(execution, seen, None)
    assert [(u.step, u.status) for u in first] == [(None, SagaStatus.RUNNING)]

    def done(record: StepRecord, at: float) -> None:
        record.status, record.attempt = StepStatus.SUCCESS, 1
        record.started_at, record.finished_at = at - 1, at

    done(execution.steps[2], 200.0)  # a parallel group: step 2 finished before step 1
    done(execution.steps[1], 300.0)
    execution.status = SagaStatus.COMPLETED
    later = _updates(execution, seen, SagaStatus.RUNNING)
    assert [(u.step.index if u.step else None, u.status) for u in later] == [
        (2, SagaStatus.COMPLETED),
        (1, SagaStatus.COMPLETED),
        (None, SagaStatus.COMPLETED),
    ]
    assert _updates(execution, seen, SagaStatus.COMPLETED) == []
    # Watched only once it had finished: its steps, then its end, last.
    again = _updates(execution, {}, None)
    assert [(u.step.index if u.step else None, u.is_final) for u in again] == [
        (2, False),
        (1, False),
        (None, True),
    ]


def test_thread_limit() -> None:
    """The number of blocking calls run at once per loop is a positive integer."""
    before = limit()
    try:
        set_thread_limit(2)
        assert limit() == 2
        with pytest.raises(ValueError, match="positive integer, got 0"):
            set_thread_limit(0)
    finally:
        set_thread_limit(before)


# -- the listener machinery, on a transport made of an asyncio queue --------------------------


class QueueNotifications(Notifications):
    """Announcements put on an asyncio queue by the test; `fail_connect` makes connect fail."""

    tick = 0.05
    linger = 0.2

    def __init__(self, fail_connect: bool = False) -> None:
        super().__init__()
        self.fail_connect = fail_connect
        self.queue: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.disconnected = False

    async def connect(self) -> None:
        if self.fail_connect:
            raise ConnectionError("no server here")

    async def subscribe(self, topic: str) -> None:
        self.subscribed.append(topic)

    async def unsubscribe(self, topics: list[str]) -> None:
        self.unsubscribed.extend(topics)

    async def receive(self, timeout: float) -> AsyncIterator[str]:
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return
        if isinstance(item, BaseException):
            raise item
        yield item

    async def disconnect(self) -> None:
        self.disconnected = True


def _finish_after(store: MemorySagaBackend, execution: SagaExecution, delay: float) -> Any:
    async def later() -> None:
        await asyncio.sleep(delay)
        store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})

    return asyncio.ensure_future(later())


def test_a_notified_wait_reads_twice_and_the_idle_listener_closes() -> None:
    """A waiter joins, reads, sleeps until its topic is announced, reads again; then the
    topic is unsubscribed and the listener disconnects after `linger`."""
    store = MemorySagaBackend()
    execution = make_execution()
    store.create(execution)
    made: list[QueueNotifications] = []

    def factory() -> Notifications:
        made.append(QueueNotifications())
        return made[-1]

    async def run() -> tuple[Any, int]:
        listener = lambda: notifications_for("queue-test", factory)  # noqa: E731
        reads = 0
        real_get = store.get

        def counting_get(saga_id: str) -> Any:
            nonlocal reads
            reads += 1
            return real_get(saga_id)

        store.get = counting_get  # type: ignore[method-assign]
        waiting = asyncio.ensure_future(
            wait_notified(store, execution.saga_id, 10, listener, "t1", recheck=60)
        )
        await asyncio.sleep(0.1)
        _finish_after(store, execution, 0)
        await asyncio.sleep(0.05)
        made[0].queue.put_nowait("t1")
        got = await waiting
        await asyncio.sleep(0.6)
        return got, reads

    got, reads = asyncio.run(run())
    assert got is not None and got.status is SagaStatus.COMPLETED
    assert reads == 2
    assert len(made) == 1 and made[0].subscribed == ["t1"] and made[0].unsubscribed == ["t1"]
    assert not made[0].alive and made[0].disconnected


def test_a_listener_that_cannot_connect_falls_back_to_polling() -> None:
    """When the listener cannot connect, the waiter polls the store and still finishes."""
    store = MemorySagaBackend()
    execution = make_execution()
    store.create(execution)

    async def run() -> Any:
        listener = lambda: notifications_for(  # noqa: E731
            "queue-fails", lambda: QueueNotifications(fail_connect=True)
        )
        _finish_after(store, execution, 0.2)
        return await wait_notified(store, execution.saga_id, 10, listener, "t1")

    got = asyncio.run(run())
    assert got is not None and got.status is SagaStatus.COMPLETED


def test_a_listener_that_fails_wakes_its_waiters_who_then_poll() -> None:
    """A listener whose connection fails wakes every waiter; they finish by polling."""
    store = MemorySagaBackend()
    executions = [make_execution() for _ in range(3)]
    for execution in executions:
        store.create(execution)
    made: list[QueueNotifications] = []

    def factory() -> Notifications:
        made.append(QueueNotifications())
        return made[-1]

    async def run() -> list[Any]:
        listener = lambda: notifications_for("queue-breaks", factory)  # noqa: E731
        waits = [
            asyncio.ensure_future(
                wait_notified(store, e.saga_id, 10, listener, e.saga_id, recheck=60)
            )
            for e in executions
        ]
        await asyncio.sleep(0.1)
        made[0].queue.put_nowait(ConnectionError("connection reset"))
        await asyncio.sleep(0.1)
        for execution in executions:
            _finish_after(store, execution, 0.1)
        return list(await asyncio.gather(*waits))

    got = asyncio.run(run())
    assert [g.status for g in got] == [SagaStatus.COMPLETED] * 3
    assert len(made) == 1 and not made[0].alive and made[0].disconnected


class SwallowingNotifications(QueueNotifications):
    """A transport whose read loses a cancellation (as a driver's read may when the
    cancellation arrives just as its own timeout fires) and reads on until closed."""

    tick = 3.0
    linger = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()

    async def receive(self, timeout: float) -> AsyncIterator[str]:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.CancelledError:
            await asyncio.wait_for(self.closed.wait(), timeout)  # the cancellation is lost
        except asyncio.TimeoutError:
            pass
        for topic in ():
            yield topic

    async def disconnect(self) -> None:
        await super().disconnect()
        self.closed.set()


def test_a_listener_stops_at_once_even_if_its_read_loses_the_cancellation() -> None:
    """When the loop ends (`asyncio.run` cancels its tasks), the listener stops and
    disconnects at once, even over a read that swallows the cancellation: the loop does
    not wait for the read's tick or the listener's linger."""
    store = MemorySagaBackend()
    execution = make_execution()
    store.create(execution)
    made: list[SwallowingNotifications] = []

    def factory() -> Notifications:
        made.append(SwallowingNotifications())
        return made[-1]

    async def run() -> Any:
        listener = lambda: notifications_for("queue-swallows", factory)  # noqa: E731
        return await wait_notified(store, execution.saga_id, 0.2, listener, "t1")

    started = time.monotonic()
    assert asyncio.run(run()) is None
    assert time.monotonic() - started < 1.5
    assert len(made) == 1 and made[0].disconnected and not made[0].alive
