"""The conformance suite, processes: one store, written by several processes.

A Celery worker runs tasks in several processes: the children of a prefork pool,
forked from the worker's main process, and workers on other machines. Their writes
meet in the store, so its records must be visible, and its compare-and-set atomic,
across processes. These tests fork child processes that use the `backend` fixture's
store, inherited exactly as a prefork child inherits a store the worker built before
forking: each child must open connections of its own (``os.register_at_fork``, or a
check of ``os.getpid()``), and the parent's connections must still work after the
children are gone.

A store that lives in one process's memory declares
`Requirements.shared_between_processes` false, and these tests are skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import pytest

from celery_saga.backends.base import SagaBackend, StepExpect
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution

#: Seconds a child process may take before the test fails (a child stuck on a lock or
#: a connection it inherited from the parent never answers).
CHILD_TIMEOUT = 60.0

_PENDING = frozenset({StepStatus.PENDING})
_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})

#: A call to make in a child process: a function and its arguments. The function runs
#: in a forked copy of this process (nothing is pickled but its return value, which
#: must be plain data).
Call = tuple[Callable[..., Any], tuple[Any, ...]]


class Children:
    """Child processes forked to make one call each; `results` collects their answers."""

    def __init__(self, calls: Sequence[Call], *, together: bool = False) -> None:
        try:
            context = multiprocessing.get_context("fork")
        except ValueError:
            pytest.skip(
                "this platform cannot fork: the cross-process tests fork child processes "
                "(as Celery's prefork pool does)"
            )
        gate = context.Barrier(len(calls)) if together else None
        self._started: list[tuple[Any, Connection]] = []
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads (a driver's, a
            # server's); forking such a process is what a prefork worker does.
            warnings.simplefilter("ignore", DeprecationWarning)
            for fn, args in calls:
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(sender, gate, fn, args), daemon=True)
                process.start()
                sender.close()
                self._started.append((process, receiver))

    def results(self) -> list[Any]:
        """Each call's return value, in order; fail with a child's traceback or silence."""
        deadline = time.monotonic() + CHILD_TIMEOUT
        answers: list[tuple[str, Any]] = []
        for process, receiver in self._started:
            try:
                if not receiver.poll(max(0.0, deadline - time.monotonic())):
                    self._stop()
                    pytest.fail(
                        f"a child process did not answer within {CHILD_TIMEOUT:.0f} s: does "
                        "the store use a lock or a connection it inherited from the parent "
                        "across fork()?"
                    )
                answers.append(receiver.recv())
            except EOFError:
                process.join(CHILD_TIMEOUT)
                self._stop()
                pytest.fail(
                    f"child process {process.pid} exited (code {process.exitcode}) "
                    "without an answer"
                )
            finally:
                receiver.close()
            process.join(CHILD_TIMEOUT)
        for (process, _), (kind, value) in zip(self._started, answers):
            if kind == "error":
                pytest.fail(f"in child process {process.pid}:\n{value}")
        return [value for _, value in answers]

    def _stop(self) -> None:
        for process, _ in self._started:
            if process.is_alive():
                process.terminate()
                process.join(5)


def in_children(calls: Sequence[Call], *, together: bool = False) -> list[Any]:
    """Make each call in a forked child process; with `together`, all at the same moment."""
    return Children(calls, together=together).results()


def _child(sender: Connection, gate: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        if gate is not None:
            gate.wait(CHILD_TIMEOUT)
        answer: tuple[str, Any] = ("ok", fn(*args))
    except BaseException:
        answer = ("error", traceback.format_exc())
    sender.send(answer)
    sender.close()


class ProcessTests(SuiteBase):
    """The conformance suite, processes (a part of `BackendConformance`)."""

    def _require_shared(self) -> None:
        if not self.requirements.shared_between_processes:
            pytest.skip(
                "this store declares that other processes do not see its executions "
                "(Requirements.shared_between_processes)"
            )

    def test_one_process_creates_another_reads_and_compares_and_sets(
        self, backend: SagaBackend
    ) -> None:
        """An execution one child process creates, another finds, reads whole, and
        compare-and-sets (step, counter, saga); the parent, whose connections both
        inherited, then reads their writes and gets the execution back for its key."""
        self._require_shared()
        key = f"processes-{uuid.uuid4()}"
        execution = make_execution(idempotency_key=key)
        sid = execution.saga_id

        def create() -> tuple[str, bool]:
            stored, created = backend.create(execution)
            return stored.saga_id, created

        def read_and_claim() -> dict[str, Any]:
            found = backend.find_by_idempotency_key(key)
            got = backend.get(sid)
            claim = {"status": StepStatus.RUNNING, "attempt": 1, "task_id": f"pid-{os.getpid()}"}
            expect = StepExpect(status=_PENDING, attempt=0)
            first = backend.update_step(sid, 0, claim, expect=expect, count_in="stage:0")
            again = backend.update_step(sid, 0, claim, expect=expect, count_in="stage:0")
            saga = backend.update_saga(
                sid, {"error": "written by another process"}, expect_status={SagaStatus.RUNNING}
            )
            return {
                "found": None if found is None else found.saga_id,
                "record": None if got is None else got.to_dict() | {"updated_at": 0},
                "first": (first.applied, first.status.value, first.count),
                "again": again.applied,
                "saga": saga,
                "pid": os.getpid(),
            }

        assert in_children([(create, ())]) == [(sid, True)]
        [seen] = in_children([(read_and_claim, ())])
        assert seen["found"] == sid
        assert seen["record"] == execution.to_dict() | {"updated_at": 0}
        assert seen["first"] == (True, "running", 1)
        assert seen["again"] is False and seen["saga"] is True
        got = backend.get(sid)
        assert got is not None
        step = got.step(0)
        assert (step.status, step.attempt, step.task_id, step.seq) == (
            StepStatus.RUNNING,
            1,
            f"pid-{seen['pid']}",
            1,
        )
        assert got.error == "written by another process"
        again, created = backend.create(make_execution(idempotency_key=key))
        assert not created and again.saga_id == sid

    def test_processes_racing_for_one_compare_and_set_exactly_one_wins(
        self, backend: SagaBackend
    ) -> None:
        """Three child processes released together finish one member each of a parallel
        stage (one counter: each sees a different value) and race to start the same next
        step: exactly one start applies, and the parent reads the winner's write."""
        self._require_shared()
        racers = 3
        execution = make_execution(stages=[0] * racers + [1])
        backend.create(execution)
        sid, nxt = execution.saga_id, racers

        def race(i: int) -> tuple[int | None, bool]:
            done = backend.update_step(
                sid,
                i,
                {"status": StepStatus.SUCCESS, "output": {"by": i}},
                expect=StepExpect(status=_FORWARD),
                count_in="stage:0",
            )
            start = backend.update_step(
                sid,
                nxt,
                {"status": StepStatus.RUNNING, "attempt": 1, "task_id": f"racer-{i}"},
                expect=StepExpect(status=_PENDING, attempt=0),
            )
            return done.count, start.applied

        results = in_children([(race, (i,)) for i in range(racers)], together=True)
        assert sorted(count for count, _ in results) == list(range(1, racers + 1))
        wins = [started for _, started in results]
        assert sum(wins) == 1
        got = backend.get(sid)
        assert got is not None
        assert got.step(nxt).task_id == f"racer-{wins.index(True)}"
        assert sorted(s.seq for s in got.steps[:racers] if s.seq is not None) == [1, 2, 3]

    def test_wait_returns_when_another_process_finishes_the_saga(
        self, backend: SagaBackend
    ) -> None:
        """`wait` in the parent returns once a child process moves the execution to a
        finished status (a notification, where the store has one, crosses processes)."""
        self._require_shared()
        execution = make_execution()
        backend.create(execution)
        sid = execution.saga_id

        def finish() -> bool:
            time.sleep(0.5)  # the parent is waiting by then
            return backend.update_saga(
                sid,
                {"status": SagaStatus.COMPLETED, "output": {"ok": 1}, "finished_at": time.time()},
                expect_status={SagaStatus.RUNNING},
            )

        children = Children([(finish, ())])
        started = time.monotonic()
        got = backend.wait(sid, timeout=30)
        waited = time.monotonic() - started
        assert children.results() == [True]
        assert got is not None and got.status is SagaStatus.COMPLETED
        assert got.output == {"ok": 1}
        assert waited < 25
