"""The conformance suite, attempts: who ran a step, its history of attempts, trace context.

A step's `worker`, `comp_worker` and `history` and an execution's `trace_context` are
plain JSON like the rest of the record: a store keeps them through `create`,
`update_step` (and `take_over`, `update_step_and_get`) and gives them back exactly.
"""

from __future__ import annotations

import copy
from typing import Any

from celery_saga.backends.base import SagaBackend, StepExpect
from celery_saga.models import StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})
#: Times with every digit a double holds (a store that rounds them is caught).
_T = 1_764_000_000.123456


def _history(n: int) -> list[dict[str, Any]]:
    """`n` entries in the shape the runtime writes, with the values stores get wrong."""
    return [
        {
            "part": "forward" if i % 2 == 0 else "compensation",
            "attempt": i + 1,
            "started_at": _T + i + 0.000001,
            "finished_at": None if i == 1 else _T + i + 0.5,
            "worker": "celery@höst-ünïcode" if i == 0 else None,
            "outcome": "retried" if i % 2 == 0 else "failed",
            "error": 'ConnectionError: "upstream" down\nline 2 🎉' if i != 2 else None,
        }
        for i in range(n)
    ]


class AttemptRecordTests(SuiteBase):
    """The conformance suite, attempts (a part of `BackendConformance`)."""

    def test_attempt_fields_round_trip_through_create(self, backend: SagaBackend) -> None:
        """`create` keeps a step's ``worker``, ``comp_worker`` and ``history`` (a list of
        dicts: exact floats, None, unicode) and the execution's ``trace_context``, and `get`
        gives them back as written; steps without them read None."""
        execution = make_execution()
        execution.trace_context = {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vendor=ü,other=1",
        }
        first = execution.steps[0]
        first.worker, first.comp_worker = "celery@worker-1", "host-2/4242"
        first.history = _history(3)
        backend.create(execution)
        got = backend.get(execution.saga_id)
        assert got is not None
        assert got.trace_context == execution.trace_context
        assert got.step(0).history == _history(3)
        assert (got.step(0).worker, got.step(0).comp_worker) == ("celery@worker-1", "host-2/4242")
        for step in got.steps[1:]:
            assert (step.worker, step.comp_worker, step.history) == (None, None, None)
        assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}
        plain = make_execution()
        backend.create(plain)
        read = backend.get(plain.saga_id)
        assert read is not None and read.trace_context is None

    def test_update_step_writes_workers_and_history(self, backend: SagaBackend) -> None:
        """`update_step` sets ``worker``, ``comp_worker`` and ``history``, replaces the history
        with a longer one and clears the fields with None; a refused write changes none of
        them."""
        execution = make_execution()
        backend.create(execution)
        sid = execution.saga_id
        write = backend.update_step(
            sid,
            1,
            {"status": StepStatus.RUNNING, "attempt": 1, "worker": "celery@wörker"},
            expect=StepExpect(status=_FORWARD, attempt_at_most=1),
        )
        assert write.applied
        retried = backend.update_step(
            sid,
            1,
            {"status": StepStatus.PENDING, "attempt": 2, "worker": None, "history": _history(1)},
            expect=StepExpect(status=_FORWARD, attempt=1),
        )
        assert retried.applied and retried.attempt == 2
        got = backend.get(sid)
        assert got is not None
        assert (got.step(1).worker, got.step(1).history) == (None, _history(1))
        refused = backend.update_step(
            sid, 1, {"worker": "stale", "history": []}, expect=StepExpect(attempt=1)
        )
        assert not refused.applied
        longer = _history(4)
        assert backend.update_step(
            sid, 1, {"history": longer, "comp_worker": "celery@ünd"}, expect=StepExpect(attempt=2)
        ).applied
        got = backend.get(sid)
        assert got is not None
        assert (got.step(1).worker, got.step(1).comp_worker) == (None, "celery@ünd")
        assert got.step(1).history == longer
        assert [s.history for s in got.steps if s.index != 1] == [None, None]
        assert backend.update_step(sid, 1, {"history": None, "comp_worker": None}).applied
        got = backend.get(sid)
        assert got is not None
        assert (got.step(1).history, got.step(1).comp_worker) == (None, None)

    def test_take_over_and_finishing_writes_carry_history(self, backend: SagaBackend) -> None:
        """`take_over` (recovery sending a new attempt) and `update_step_and_get` (a step
        finishing its stage) write ``history`` and ``worker`` like `update_step`, and the
        execution `update_step_and_get` returns shows them."""
        execution = make_execution(stages=[0, 1])
        backend.create(execution)
        sid = execution.saga_id
        backend.update_step(sid, 0, {"status": StepStatus.RUNNING, "attempt": 1, "worker": "w1"})
        past = _history(2)
        taken = backend.take_over(
            sid,
            0,
            {"attempt": 2, "lease_owner": None, "worker": None, "history": copy.deepcopy(past)},
            attempt=1,
            now=_T,
        )
        assert taken.applied and taken.attempt == 2
        write, got = backend.update_step_and_get(
            sid,
            0,
            {"status": StepStatus.SUCCESS, "attempt": 2, "worker": "celery@w2"},
            expect=StepExpect(status=_FORWARD, attempt_at_most=2),
            count_in="stage:0",
            get_at=1,
        )
        assert write.applied and got is not None
        assert (got.step(0).worker, got.step(0).history) == ("celery@w2", past)
        stored = backend.get(sid)
        assert stored is not None
        assert (stored.step(0).worker, stored.step(0).history) == ("celery@w2", past)
