"""The conformance suite, asyncio: `SagaBackend.async_wait` never blocks the event loop.

Each test runs its own event loop (``asyncio.run``), so the suite needs no pytest
plugin for asyncio. A probe coroutine sleeps 5 ms in a loop and records how late it
wakes: a store that waited with a blocking call on the loop would show the whole
wait as lag.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from celery_saga.backends.base import SagaBackend
from celery_saga.models import SagaStatus
from celery_saga.testing.kit import SuiteBase, make_execution

T = TypeVar("T")

#: The longest stall of the event loop these tests accept (seconds). Generous, for
#: loaded CI machines; a wait that blocked the loop would stall it for 0.3 s or more.
MAX_LOOP_LAG = 0.15


class LoopLag:
    """How late the event loop wakes a coroutine that sleeps `period` seconds in a loop.

    While it measures, a control loop in a thread of its own runs the same probe
    (`control`): a stall both loops suffer (a garbage collection, a busy machine) is
    not the code under test's; one only the measured loop suffers is. `excess` is the
    worst stall less the control's.
    """

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self.samples = 0
        self.control = 0.0

    @property
    def excess(self) -> float:
        """The worst stall of the measured loop beyond what the control loop suffered."""
        return max(0.0, self.worst - self.control)

    async def probe(self) -> None:
        """Sleep `period`, note the overshoot, forever (cancel it to stop)."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - started - self.period)
            self.samples += 1

    def _control(self, stop: threading.Event) -> None:
        """The same probe on a loop of its own in this thread, until `stop` is set."""

        async def run() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                await asyncio.sleep(self.period)
                self.control = max(self.control, time.perf_counter() - started - self.period)

        asyncio.run(run())

    async def measure(self, work: Awaitable[T]) -> T:
        """Await `work` with the probe (and the control loop) running alongside."""
        stop = threading.Event()
        control = threading.Thread(target=self._control, args=(stop,), daemon=True)
        control.start()
        probe = asyncio.ensure_future(self.probe())
        try:
            return await work
        finally:
            probe.cancel()
            try:
                await probe
            except asyncio.CancelledError:
                pass
            stop.set()
            control.join(timeout=5)


def _finish_later(backend: SagaBackend, saga_ids: list[str], delay: float, **changes: Any) -> Any:
    """A started timer that moves every execution of `saga_ids` to `changes` after `delay`."""

    def finish() -> None:
        for saga_id in saga_ids:
            backend.update_saga(saga_id, changes)

    timer = threading.Timer(delay, finish)
    timer.start()
    return timer


class AsyncWaitTests(SuiteBase):
    """The conformance suite, asyncio (a part of `BackendConformance`)."""

    def test_async_wait_returns_when_terminal_without_blocking_the_loop(
        self, backend: SagaBackend
    ) -> None:
        """`async_wait` returns the execution once another thread finishes it, and the event
        loop keeps running meanwhile (no stall over `MAX_LOOP_LAG`)."""
        execution = make_execution()
        backend.create(execution)
        lag = LoopLag()
        timer = _finish_later(
            backend, [execution.saga_id], 0.3, status=SagaStatus.COMPLETED, output={"ok": 1}
        )
        try:
            got = asyncio.run(lag.measure(backend.async_wait(execution.saga_id, timeout=10)))
        finally:
            timer.join()
        assert got is not None and got.status is SagaStatus.COMPLETED and got.output == {"ok": 1}
        assert lag.samples > 10, f"the loop ran only {lag.samples} probe sleeps in 0.3 s"
        assert lag.excess < MAX_LOOP_LAG, (
            f"the event loop stalled for {lag.worst:.3f}s (a control loop: {lag.control:.3f}s)"
        )

    def test_async_wait_times_out(self, backend: SagaBackend) -> None:
        """`async_wait` returns None once its timeout has passed (and not much later)."""
        execution = make_execution()
        backend.create(execution)
        started = time.monotonic()
        assert asyncio.run(backend.async_wait(execution.saga_id, timeout=0.3)) is None
        assert 0.25 <= time.monotonic() - started < 5

    def test_many_async_waiters_on_one_loop(self, backend: SagaBackend) -> None:
        """50 waiters on one loop all return their own execution once it finishes, and the
        loop never stalls; with `Requirements.notifies_completion_async`, they are woken by
        notifications: a couple of reads each, not a polling loop's."""
        executions = [make_execution() for _ in range(50)]
        for execution in executions:
            backend.create(execution)
        ids = [e.saga_id for e in executions]
        lag = LoopLag()
        # What one status change costs this store (several requests on some, e.g. a cluster).
        spare = make_execution()
        backend.create(spare)
        before = backend.stats.round_trips
        backend.update_saga(spare.saga_id, {"status": SagaStatus.FAILED})
        per_update = backend.stats.round_trips - before

        async def wait_all() -> list[Any]:
            return await asyncio.gather(*(backend.async_wait(sid, timeout=30) for sid in ids))

        before = backend.stats.round_trips
        timer = _finish_later(backend, ids, 1.0, status=SagaStatus.FAILED)
        try:
            started = time.monotonic()
            got = asyncio.run(lag.measure(wait_all()))
            waited = time.monotonic() - started
        finally:
            timer.join()
        assert [g.saga_id if g else None for g in got] == ids
        assert all(g.status is SagaStatus.FAILED for g in got)
        assert waited < 10
        assert lag.excess < MAX_LOOP_LAG, (
            f"the event loop stalled for {lag.worst:.3f}s (a control loop: {lag.control:.3f}s)"
        )
        if self.requirements.notifies_completion_async:
            # Per waiter: one read before waiting, one after its notification (and a spare),
            # besides the updates: polling would read each execution several times a second.
            reads = backend.stats.round_trips - before - per_update * len(ids)
            assert reads <= 3 * len(ids), f"{reads} requests for {len(ids)} waiters"

    def test_async_wait_is_woken_by_a_notification_not_by_polling(
        self, backend: SagaBackend
    ) -> None:
        """A store that declares `Requirements.notifies_completion_async` wakes `async_wait`
        by a notification, making a handful of requests, not a polling loop's."""
        if not self.requirements.notifies_completion_async:
            pytest.skip(
                "this store declares that async_wait() polls "
                "(Requirements.notifies_completion_async)"
            )
        execution = make_execution()
        backend.create(execution)
        before = backend.stats.round_trips
        timer = _finish_later(backend, [execution.saga_id], 1.0, status=SagaStatus.COMPENSATED)
        try:
            started = time.monotonic()
            got = asyncio.run(backend.async_wait(execution.saga_id, timeout=20))
            waited = time.monotonic() - started
        finally:
            timer.join()
        assert got is not None and got.status is SagaStatus.COMPENSATED
        assert waited < 5
        assert backend.stats.round_trips - before <= 6
