"""Table tests of the decisions about composed steps: child sagas, external steps,
conditions, and reverts (`celery_saga.runtime.decide`). No store, no broker.

The saga: step 0 a task | step 1 a child saga | step 2 an external step (timeout
60 s) | step 3 a task with a condition.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_saga import Saga, saga_step
from celery_saga.models import SagaExecution, SagaStatus, StepStatus
from celery_saga.runtime import decide
from celery_saga.runtime.decide import AfterStage, NextCompensation, Recover, Recovery
from celery_saga.runtime.start import new_execution

app = Celery("decide-compose", broker="memory://", set_as_current=False)


@app.task(shared=False, name="dc.undo")
def undo(data: Any) -> None:
    """A compensation that does nothing (never run here)."""


@saga_step(compensate=undo)
@app.task(shared=False, name="dc.task")
def task(**kw: Any) -> dict[str, Any]:
    return {}


CHILD = Saga("dc_child", app=app).add_step(task)
SAGA = (
    Saga("dc_saga", app=app)
    .add_step(task)
    .add_saga(CHILD)
    .add_external("await_payment", timeout=60, compensate=undo)
    .add_step(task, when=lambda ctx: ctx.get("wrap"))
)
DEFINITION = SAGA.definition
NOW = 1_000.0

_STATUS = {
    "p": StepStatus.PENDING,
    "r": StepStatus.RUNNING,
    "s": StepStatus.SUCCESS,
    "f": StepStatus.FAILED,
    "k": StepStatus.SKIPPED,
    "c": StepStatus.COMPENSATING,
    "C": StepStatus.COMPENSATED,
}


def record(
    steps: str,
    status: SagaStatus = SagaStatus.RUNNING,
    *,
    child: bool = True,
    waiting_until: float | None = None,
    revert: bool = False,
) -> SagaExecution:
    """An execution whose four steps have the statuses `steps` spells.

    A running child step has its child id when `child`; a running external step waits
    (lease owner "external") until `waiting_until`.
    """
    execution = new_execution(DEFINITION, {}, None, None)
    execution.status = status
    execution.revert_reason = "returned" if revert else None
    for letter, rec in zip(steps, execution.steps, strict=True):
        rec.status = _STATUS[letter]
        if letter != "p":
            rec.attempt = 1
            rec.started_at = NOW - 10
            rec.sent_at = NOW - 10
    if child and execution.steps[1].status is not StepStatus.PENDING:
        execution.steps[1].child_id = "11111111-2222-5333-8444-555555555555"
    if execution.steps[2].status is StepStatus.RUNNING and waiting_until is not None:
        execution.steps[2].lease_owner = "external"
        execution.steps[2].lease_expires_at = waiting_until
    return execution


def test_the_records_carry_each_step_kind() -> None:
    kinds = [r.kind for r in record("pppp").steps]
    assert kinds == ["task", "saga", "external", "task"]


@pytest.mark.parametrize(
    ("steps", "stage", "expected"),
    [
        ("sspp", 1, AfterStage.DISPATCH_NEXT),
        ("ssks", 3, AfterStage.COMPLETE),  # a skipped step lets the saga go on
        ("sssk", 3, AfterStage.COMPLETE),
        ("sfpp", 1, AfterStage.COMPENSATE),
    ],
)
def test_after_stage(steps: str, stage: int, expected: AfterStage) -> None:
    assert decide.after_stage(DEFINITION, record(steps), stage, NOW) is expected


@pytest.mark.parametrize(
    ("execution", "expected"),
    [
        # A child that runs: recovery looks at it (starts it if missing, takes its outcome).
        (record("srpp"), Recovery(Recover.CHILDREN, 1, (1,))),
        # Marked started but no child linked yet: dispatched again like a lost task.
        (record("srpp", child=False), Recovery(Recover.REDISPATCH, 1, (1,))),
        # An external step waiting within its timeout is left alone...
        (record("ssrp", waiting_until=NOW + 5), Recovery(Recover.WAIT, 2)),
        # (reached but its wait not recorded: dispatched again)...
        (record("ssrp", waiting_until=None), Recovery(Recover.REDISPATCH, 2, (2,))),
        # ...and fails once its timeout passed.
        (record("ssrp", waiting_until=NOW - 1), Recovery(Recover.TIME_OUT, 2, (2,))),
        # Compensating: a child being reverted, or still running, is looked at.
        (record("scCp", SagaStatus.COMPENSATING), Recovery(Recover.CHILDREN, steps=(1,))),
        (record("srfp", SagaStatus.COMPENSATING), Recovery(Recover.CHILDREN, steps=(1,))),
        # Compensating while an external step waits: stop waiting, go on compensating.
        (
            record("ssrp", SagaStatus.COMPENSATING, waiting_until=NOW + 5),
            Recovery(Recover.COMPENSATE_NEXT),
        ),
    ],
)
def test_recovery_of_composed_steps(execution: SagaExecution, expected: Recovery) -> None:
    assert decide.recovery(DEFINITION, execution, NOW, stalled_after=5.0) == expected


def test_an_external_step_with_no_timeout_waits_forever() -> None:
    execution = record("ssrp", waiting_until=NOW + 5)
    execution.steps[2].lease_expires_at = None
    later = NOW + 10**9
    assert decide.recovery(DEFINITION, execution, later, stalled_after=5.0) == Recovery(
        Recover.WAIT, 2
    )


def test_an_external_step_with_no_wait_recorded_is_not_waiting() -> None:
    execution = record("ssrp")
    assert not decide.waiting_outside(execution.steps[2])
    execution.steps[2].lease_owner = "external"
    assert decide.waiting_outside(execution.steps[2])


@pytest.mark.parametrize(
    ("execution", "expected"),
    [
        # A waiting external step is dropped when the saga compensates, then steps undone.
        (
            record("ssrp", SagaStatus.COMPENSATING, waiting_until=NOW + 5),
            NextCompensation(drop=(2,), compensate=1),
        ),
        # A completed child is compensated (as a whole) like a step.
        (record("sssf", SagaStatus.COMPENSATING), NextCompensation(compensate=2)),
        (record("sCCk", SagaStatus.COMPENSATING), NextCompensation(compensate=0)),
        # A child that failed (it compensated itself) needs nothing more.
        (record("Cfpp", SagaStatus.COMPENSATING), NextCompensation(final=SagaStatus.COMPENSATED)),
        # A revert ends REVERTED.
        (
            record("CCCk", SagaStatus.COMPENSATING, revert=True),
            NextCompensation(final=SagaStatus.REVERTED),
        ),
        # A child still running: wait for it.
        (record("srfp", SagaStatus.COMPENSATING), NextCompensation(wait=True)),
    ],
)
def test_next_compensation_of_composed_steps(
    execution: SagaExecution, expected: NextCompensation
) -> None:
    assert decide.next_compensation(execution) == expected


def test_a_step_before_a_composed_or_conditional_one_does_not_hand_on_by_itself() -> None:
    # Step 0's worker cannot start a child saga's stage; steps 1 and 2 are no tasks.
    assert not decide.can_hand_on(DEFINITION, 0, False)
    assert not decide.can_hand_on(DEFINITION, 2, False)  # step 3 has a condition
