"""Table tests of the runtime's pure decisions (`celery_saga.runtime.decide`).

Each row is a record state, written compactly as one status letter per step of a
three-stage saga (step 0 | steps 1 and 2 in parallel | step 3), and the decision
expected for it. No store, no broker: decisions are functions of a record.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_saga import Saga, saga_step
from celery_saga.models import SagaExecution, SagaStatus, StepStatus
from celery_saga.runtime import decide
from celery_saga.runtime.decide import AfterStage, Gate, NextCompensation, Recover, Recovery
from celery_saga.runtime.start import new_execution

app = Celery("decide", broker="memory://", set_as_current=False)


def _task(name: str, compensate: Any = None) -> Any:
    @app.task(shared=False, name=name)
    def t(**kw: Any) -> dict[str, Any]:
        return {}

    if compensate is not None:
        return saga_step(compensate=compensate)(t)
    return saga_step(no_compensation=True)(t)


@app.task(shared=False, name="decide.undo")
def undo(data: Any) -> None:
    """A compensation that does nothing (never run here)."""


first, left, right, last = (
    _task("decide.first", undo),
    _task("decide.left", undo),
    _task("decide.right", undo),
    _task("decide.last"),
)
SAGA = Saga("decide_saga", app=app).add_step(first).add_parallel(left, right).add_step(last)
DEFINITION = SAGA.definition

_STATUS = {
    "p": StepStatus.PENDING,
    "r": StepStatus.RUNNING,
    "s": StepStatus.SUCCESS,
    "f": StepStatus.FAILED,
    "k": StepStatus.SKIPPED,
    "c": StepStatus.COMPENSATING,
    "C": StepStatus.COMPENSATED,
    "x": StepStatus.COMPENSATION_FAILED,
}


def record(
    steps: str,
    status: SagaStatus = SagaStatus.RUNNING,
    *,
    retried: str = "",
    cancelled: bool = False,
    deadline_at: float | None = None,
    definition_hash: str | None = None,
) -> SagaExecution:
    """An execution whose steps have the statuses `steps` spells (one letter each).

    Steps named in `retried` are at attempt 2 (a retry), the others at attempt 1
    once they moved; finished steps got `seq` in plan order.
    """
    execution = new_execution(DEFINITION, {"order": 1}, None, None)
    execution.status = status
    execution.deadline_at = deadline_at
    if cancelled:
        execution.cancelled_at = 1.0
    if definition_hash is not None:
        execution.definition_hash = definition_hash
    for index, letter in enumerate(steps):
        rec = execution.step(index)
        rec.status = _STATUS[letter]
        if letter != "p" or str(index) in retried:
            rec.attempt = 2 if str(index) in retried else 1
        if letter not in "pr":
            rec.finished_at = 10.0 + index
            rec.seq = 1
        if letter in "sfcCx":
            rec.compensation_data = {"step": index} if letter != "f" else None
    return execution


@pytest.mark.parametrize(
    ("steps", "status", "stage", "now", "deadline_at", "expected"),
    [
        ("sppp", SagaStatus.RUNNING, 0, 5.0, None, AfterStage.DISPATCH_NEXT),
        ("sssp", SagaStatus.RUNNING, 1, 5.0, None, AfterStage.DISPATCH_NEXT),
        ("ssss", SagaStatus.RUNNING, 2, 5.0, None, AfterStage.COMPLETE),
        ("sfsp", SagaStatus.RUNNING, 1, 5.0, None, AfterStage.COMPENSATE),
        ("sspp", SagaStatus.COMPENSATING, 1, 5.0, None, AfterStage.COMPENSATE),
        ("sssp", SagaStatus.RUNNING, 1, 5.0, 4.0, AfterStage.EXPIRE),
        ("sssp", SagaStatus.RUNNING, 1, 3.0, 4.0, AfterStage.DISPATCH_NEXT),
        ("sssp", SagaStatus.COMPENSATING, 1, 5.0, 4.0, AfterStage.COMPENSATE),
    ],
)
def test_after_stage(
    steps: str,
    status: SagaStatus,
    stage: int,
    now: float,
    deadline_at: float | None,
    expected: AfterStage,
) -> None:
    execution = record(steps, status, deadline_at=deadline_at)
    assert decide.after_stage(DEFINITION, execution, stage, now) is expected


@pytest.mark.parametrize(
    ("steps", "status", "kwargs", "expected"),
    [
        # Not compensating: nothing to decide.
        ("sssp", SagaStatus.RUNNING, {}, None),
        # One compensation under way: wait for its outcome.
        ("cssp", SagaStatus.COMPENSATING, {}, NextCompensation(wait=True)),
        # A step in flight finishes first; a waiting retry is dropped meanwhile.
        ("srpp", SagaStatus.COMPENSATING, {}, NextCompensation(wait=True)),
        ("srpp", SagaStatus.COMPENSATING, {"retried": "2"}, NextCompensation(drop=(2,), wait=True)),
        # Reverse order: the later stage first (step 2 before step 0); ties by index.
        ("sssp", SagaStatus.COMPENSATING, {}, NextCompensation(compensate=2)),
        ("sCsp", SagaStatus.COMPENSATING, {}, NextCompensation(compensate=2)),
        ("sCCp", SagaStatus.COMPENSATING, {}, NextCompensation(compensate=0)),
        # A failed step without compensation data needs none.
        ("sfCp", SagaStatus.COMPENSATING, {}, NextCompensation(compensate=0)),
        # Nothing left: the final status.
        ("CCCk", SagaStatus.COMPENSATING, {}, NextCompensation(final=SagaStatus.COMPENSATED)),
        ("CxCk", SagaStatus.COMPENSATING, {}, NextCompensation(final=SagaStatus.FAILED)),
        (
            "CCCk",
            SagaStatus.COMPENSATING,
            {"cancelled": True},
            NextCompensation(final=SagaStatus.CANCELLED),
        ),
        (
            "CxCk",
            SagaStatus.COMPENSATING,
            {"cancelled": True},
            NextCompensation(final=SagaStatus.FAILED),
        ),
    ],
)
def test_next_compensation(
    steps: str, status: SagaStatus, kwargs: dict[str, Any], expected: NextCompensation | None
) -> None:
    assert decide.next_compensation(record(steps, status, **kwargs)) == expected


@pytest.mark.parametrize(
    ("steps", "status", "kwargs", "expected"),
    [
        ("pppp", SagaStatus.PENDING, {}, Recovery(Recover.START)),
        ("rppp", SagaStatus.RUNNING, {}, Recovery(Recover.REDISPATCH, 0, (0,))),
        ("srsp", SagaStatus.RUNNING, {}, Recovery(Recover.REDISPATCH, 1, (1,))),
        ("srpp", SagaStatus.RUNNING, {}, Recovery(Recover.REDISPATCH, 1, (1, 2))),
        ("sfsp", SagaStatus.RUNNING, {}, Recovery(Recover.STAGE_FINISHED, 1)),
        ("ssss", SagaStatus.RUNNING, {}, Recovery(Recover.COMPLETE)),
        ("sssp", SagaStatus.RUNNING, {"deadline_at": 1.0}, Recovery(Recover.EXPIRE)),
        ("sssp", SagaStatus.RUNNING, {"definition_hash": "other"}, Recovery(Recover.MISMATCH)),
        ("sCcp", SagaStatus.COMPENSATING, {}, Recovery(Recover.RESEND_COMPENSATION, steps=(2,))),
        ("srfp", SagaStatus.COMPENSATING, {}, Recovery(Recover.REDISPATCH_IN_FLIGHT, 1, (1,))),
        ("sfpp", SagaStatus.COMPENSATING, {}, Recovery(Recover.REDISPATCH_IN_FLIGHT, 1, (2,))),
        ("sfsp", SagaStatus.COMPENSATING, {}, Recovery(Recover.COMPENSATE_NEXT)),
        ("pppp", SagaStatus.COMPENSATING, {}, Recovery(Recover.COMPENSATE_NEXT)),
        ("ssss", SagaStatus.COMPLETED, {}, Recovery(Recover.NOTHING)),
    ],
)
def test_recovery(
    steps: str, status: SagaStatus, kwargs: dict[str, Any], expected: Recovery
) -> None:
    assert decide.recovery(DEFINITION, record(steps, status, **kwargs), now=5.0) == expected


@pytest.mark.parametrize(
    ("status", "attempt", "saga_status", "mine", "retries", "expected"),
    [
        (StepStatus.SUCCESS, 1, SagaStatus.RUNNING, 1, 0, Gate.REFUSE),
        (StepStatus.RUNNING, 3, SagaStatus.RUNNING, 2, 0, Gate.REFUSE),
        (StepStatus.RUNNING, 1, SagaStatus.COMPENSATING, 1, 0, Gate.IN_FLIGHT),
        (StepStatus.RUNNING, 1, SagaStatus.PENDING, 1, 0, Gate.IN_FLIGHT),
        (StepStatus.RUNNING, 1, SagaStatus.COMPENSATING, 1, 1, Gate.SKIP),
        (StepStatus.PENDING, 1, SagaStatus.COMPENSATING, 1, 0, Gate.SKIP),
        (StepStatus.PENDING, 0, SagaStatus.CANCELLED, 1, 0, Gate.SKIP),
        # Refused while the saga runs (a lease of another attempt): never skipped.
        (StepStatus.RUNNING, 1, SagaStatus.RUNNING, 2, 0, Gate.REFUSE),
        (StepStatus.PENDING, 1, SagaStatus.RUNNING, 1, 0, Gate.REFUSE),
    ],
)
def test_refused_gate(
    status: StepStatus,
    attempt: int,
    saga_status: SagaStatus,
    mine: int,
    retries: int,
    expected: Gate,
) -> None:
    assert decide.refused_gate(status, attempt, saga_status, mine, retries) is expected


def test_failure_of_names_the_first_failed_member_or_says_none_ran() -> None:
    execution = record("sfsp")
    execution.step(1).error = "boom"
    members = decide.members(DEFINITION, execution, 1)
    assert decide.failure_of(members) == ("step 1 (decide.left) failed: boom", 1)
    assert decide.failure_of(decide.members(DEFINITION, record("sksp"), 1)) == (
        "a step of the saga did not run",
        None,
    )


def test_can_hand_on_only_for_a_single_step_stage_given_the_whole_context() -> None:
    assert decide.can_hand_on(DEFINITION, 0, deadline_passed=False)
    assert not decide.can_hand_on(DEFINITION, 0, deadline_passed=True)
    assert not decide.can_hand_on(DEFINITION, 1, deadline_passed=False)  # parallel member
    assert decide.can_hand_on(DEFINITION, 3, deadline_passed=False)  # last, no output mapping


def leased(
    steps: str,
    status: SagaStatus,
    index: int,
    *,
    owner: str | None,
    expires: float | None = None,
    sent: float | None = None,
    sends: int = 0,
) -> SagaExecution:
    """`record(...)` whose step `index` has the given lease, send time and sends."""
    execution = record(steps, status)
    rec = execution.step(index)
    rec.lease_owner, rec.lease_expires_at, rec.sent_at, rec.sends = owner, expires, sent, sends
    return execution


NOW, STALLED, MAX = 100.0, 30.0, 3


@pytest.mark.parametrize(
    ("execution", "expected"),
    [
        # A live lease is left alone however long the step has run.
        (leased("srsp", SagaStatus.RUNNING, 1, owner="w", expires=NOW + 1, sent=1.0),
         Recovery(Recover.WAIT, 1)),
        # An expired lease is taken over.
        (leased("srsp", SagaStatus.RUNNING, 1, owner="w", expires=NOW - 1, sent=NOW - 5),
         Recovery(Recover.REDISPATCH, 1, (1,))),
        # Sent, unclaimed, within the queue-wait limit: still waiting for a worker.
        (leased("srsp", SagaStatus.RUNNING, 1, owner=None, sent=NOW - 10),
         Recovery(Recover.WAIT, 1)),
        # Sent and never started past the limit: sent again, each time after twice as long...
        (leased("srsp", SagaStatus.RUNNING, 1, owner=None, sent=NOW - 31),
         Recovery(Recover.REDISPATCH, 1, (1,))),
        (leased("srsp", SagaStatus.RUNNING, 1, owner=None, sent=NOW - 59, sends=1),
         Recovery(Recover.WAIT, 1)),
        (leased("srsp", SagaStatus.RUNNING, 1, owner=None, sent=NOW - 121, sends=2),
         Recovery(Recover.REDISPATCH, 1, (1,))),
        # ... until the cap: then it fails.
        (leased("srsp", SagaStatus.RUNNING, 1, owner=None, sent=NOW - 241, sends=3),
         Recovery(Recover.GIVE_UP, 1, (1,))),
        # Compensations: the same rules.
        (leased("sCcp", SagaStatus.COMPENSATING, 2, owner="w", expires=NOW + 1),
         Recovery(Recover.WAIT, steps=(2,))),
        (leased("sCcp", SagaStatus.COMPENSATING, 2, owner="w", expires=NOW),
         Recovery(Recover.RESEND_COMPENSATION, steps=(2,))),
        (leased("sCcp", SagaStatus.COMPENSATING, 2, owner=None, sent=NOW - 241, sends=3),
         Recovery(Recover.GIVE_UP_COMPENSATION, steps=(2,))),
        # A step still in flight while the saga compensates, under a live lease: wait.
        (leased("srfp", SagaStatus.COMPENSATING, 1, owner="w", expires=NOW + 5),
         Recovery(Recover.WAIT, 1)),
    ],
)  # fmt: skip
def test_recovery_with_leases(execution: SagaExecution, expected: Recovery) -> None:
    got = decide.recovery(DEFINITION, execution, NOW, stalled_after=STALLED, max_sends=MAX)
    assert got == expected


def test_refused_gate_waits_for_a_live_lease_of_another_owner_on_the_same_attempt() -> None:
    args = (StepStatus.RUNNING, 2, SagaStatus.RUNNING, 2, 0)
    assert (
        decide.refused_gate(*args, lease_owner="a", lease_expires_at=9.0, owner="b", now=5.0)
        is Gate.WAIT
    )
    assert (
        decide.refused_gate(*args, lease_owner="a", lease_expires_at=4.0, owner="b", now=5.0)
        is Gate.REFUSE
    )
    assert (
        decide.refused_gate(*args, lease_owner="b", lease_expires_at=9.0, owner="b", now=5.0)
        is Gate.REFUSE
    )


@pytest.mark.parametrize(
    ("status", "attempt", "mine", "expected"),
    [
        (StepStatus.SUCCESS, 2, 2, False),  # a duplicate of this attempt's own success
        (StepStatus.SUCCESS, 3, 2, True),  # superseded, and the newer attempt succeeded too
        (StepStatus.RUNNING, 3, 2, True),
        (StepStatus.FAILED, 3, 2, True),
        (StepStatus.SKIPPED, 2, 2, True),  # marked skipped while it ran
        (StepStatus.COMPENSATED, 2, 2, False),  # its own success, already undone
        (StepStatus.COMPENSATED, 3, 2, True),
    ],
)
def test_is_late(status: StepStatus, attempt: int, mine: int, expected: bool) -> None:
    assert decide.is_late(status, attempt, mine) is expected


def test_late_successes_are_compensated_first_and_fail_the_saga_if_they_cannot_be() -> None:
    execution = record("sfpp", SagaStatus.COMPENSATING)
    execution.step(1).late = {"1": {"state": "recorded"}, "2": {"state": "recorded"}}
    assert decide.next_compensation(execution) == NextCompensation(compensate_late=(1, 2))
    execution.step(1).late = {"1": {"state": "compensating"}}
    assert decide.next_compensation(execution) == NextCompensation(wait=True)
    execution.step(1).late = {"1": {"state": "compensated"}}
    assert decide.next_compensation(execution) == NextCompensation(compensate=0)
    done = record("CfCk", SagaStatus.COMPENSATING)
    done.step(1).late = {"1": {"state": "compensation_failed"}}
    assert decide.next_compensation(done) == NextCompensation(final=SagaStatus.FAILED)


def test_recovery_sends_again_the_lost_undoing_of_a_late_success() -> None:
    execution = record("sfCp", SagaStatus.COMPENSATING)
    execution.step(1).late = {"1": {"state": "compensating", "sent_at": NOW - 31}}
    got = decide.recovery(DEFINITION, execution, NOW, stalled_after=STALLED, max_sends=MAX)
    assert got == Recovery(Recover.RESEND_LATE, steps=(1,), late=1)
    execution.step(1).late = {"1": {"state": "compensating", "sent_at": NOW - 5}}
    got = decide.recovery(DEFINITION, execution, NOW, stalled_after=STALLED, max_sends=MAX)
    assert got == Recovery(Recover.COMPENSATE_NEXT)
