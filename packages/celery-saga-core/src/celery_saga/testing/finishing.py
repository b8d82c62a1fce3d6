"""The conformance suite, finishing: the last step's outcome and the saga's end in one write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from celery_saga.backends.base import SagaBackend, StepExpect
from celery_saga.models import SagaExecution, SagaStatus, StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})
_DONE = {"status": StepStatus.SUCCESS, "output": {"paid": 10}, "attempt": 1}


class FinishingTests(SuiteBase):
    """The conformance suite, finishing (a part of `BackendConformance`)."""

    def _at_last_step(self, backend: SagaBackend) -> str:
        """A RUNNING execution of three one-step stages whose first two succeeded."""
        execution = make_execution(steps=3)
        backend.create(execution)
        for i in (0, 1):
            backend.update_step(execution.saga_id, i, _DONE, count_in=f"stage:{i}")
        backend.update_step(execution.saga_id, 2, {"status": StepStatus.RUNNING, "attempt": 1})
        return execution.saga_id

    def _finish(self, backend: SagaBackend, sid: str, finished_at: float) -> tuple[Any, bool]:
        return backend.update_step_and_finish(
            sid,
            2,
            _DONE,
            {"status": SagaStatus.COMPLETED, "output": {"total": 10}, "finished_at": finished_at},
            expect=StepExpect(status=_FORWARD, attempt_at_most=1),
            count_in="stage:2",
        )

    def test_last_step_and_saga_end_in_one_write(self, backend: SagaBackend) -> None:
        """`update_step_and_finish` records the step and ends the RUNNING saga together: the
        step SUCCESS (counted), the execution COMPLETED with its output and finish time, and a
        waiter already waiting is woken; one round trip if the store declares
        `Requirements.finishes_in_one_round_trip`."""
        sid = self._at_last_step(backend)
        waited: list[SagaExecution | None] = []
        waiter = threading.Thread(target=lambda: waited.append(backend.wait(sid, timeout=30)))
        waiter.start()
        _until(lambda: backend.get_status(sid) is SagaStatus.RUNNING)
        finished_at = time.time()
        write, finished = self._finish(backend, sid, finished_at)
        assert write.applied and finished and write.count == 1
        assert write.status is StepStatus.SUCCESS and write.saga_status is SagaStatus.RUNNING
        got = backend.get(sid)
        assert got is not None
        assert (got.status, got.output, got.finished_at) == (
            SagaStatus.COMPLETED,
            {"total": 10},
            finished_at,
        )
        assert (got.step(2).status, got.step(2).output, got.step(2).seq) == (
            StepStatus.SUCCESS,
            {"paid": 10},
            1,
        )
        assert sid in {s.saga_id for s in backend.list(status=SagaStatus.COMPLETED).items}
        assert sid not in {s.saga_id for s in backend.list(status=SagaStatus.RUNNING).items}
        waiter.join(30)
        assert not waiter.is_alive()
        assert waited and waited[0] is not None and waited[0].status is SagaStatus.COMPLETED
        if self.requirements.finishes_in_one_round_trip:  # counted with no waiter reading
            other = self._at_last_step(backend)
            backend.stats.reset()
            assert self._finish(backend, other, time.time())[1]
            assert backend.stats.round_trips == 1

    def test_finish_leaves_a_saga_that_is_not_running(self, backend: SagaBackend) -> None:
        """A saga that turned (COMPENSATING) keeps its status: the step's write applies, the
        saga's changes do not (second value False)."""
        sid = self._at_last_step(backend)
        assert backend.update_saga(sid, {"status": SagaStatus.COMPENSATING})
        write, finished = self._finish(backend, sid, time.time())
        assert write.applied and not finished
        assert write.saga_status is SagaStatus.COMPENSATING
        got = backend.get(sid)
        assert got is not None
        assert (got.status, got.output, got.finished_at) == (SagaStatus.COMPENSATING, None, None)
        assert got.step(2).status is StepStatus.SUCCESS

    def test_refused_step_write_finishes_nothing(self, backend: SagaBackend) -> None:
        """A step write its expectations refuse (a duplicate) changes neither the step nor the
        saga; the refusal reports the stored state."""
        sid = self._at_last_step(backend)
        backend.update_step(sid, 2, {"status": StepStatus.FAILED, "error": "boom"})
        write, finished = self._finish(backend, sid, time.time())
        assert not write.applied and not finished
        assert write.status is StepStatus.FAILED and write.attempt == 1
        got = backend.get(sid)
        assert got is not None
        assert (got.status, got.output) == (SagaStatus.RUNNING, None)
        assert (got.step(2).status, got.step(2).error) == (StepStatus.FAILED, "boom")

    def test_a_saga_finished_with_its_last_step_expires(
        self, request: pytest.FixtureRequest
    ) -> None:
        """With a retention period (`Requirements.expires_finished`), an execution ended by
        `update_step_and_finish` expires as one ended by `update_saga` does."""
        if not self.requirements.expires_finished:
            pytest.skip(
                "this store declares that finished executions never expire "
                "(Requirements.expires_finished)"
            )
        make: Callable[[int], SagaBackend] = request.getfixturevalue("store_with_retention")
        store = make(1)
        sid = self._at_last_step(store)
        assert self._finish(store, sid, time.time())[1]
        _until(lambda: store.get(sid) is None, timeout=31, what="the finished execution to expire")


def _until(condition: Callable[[], bool], timeout: float = 10, what: str = "a condition") -> None:
    """Wait for `condition` with a deadline, checking every 20 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
