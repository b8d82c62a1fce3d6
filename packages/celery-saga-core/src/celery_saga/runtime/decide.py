"""Pure decisions: what happens next to an execution, given its record and definition.

Nothing here reads or writes a store or sends a message; the driver, the step
handlers and the recovery pass act on what these functions return. Each one is
unit-tested with a table of record states (tests/core/test_decide.py).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from celery_saga.definition import ContextInput, ContextSource, SagaDefinition, TransformInput
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepRecord, StepStatus

#: Step statuses of a step whose forward part has not ended.
FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})
#: Step statuses that let the saga go on: done, or skipped by its condition.
PASSED = frozenset({StepStatus.SUCCESS, StepStatus.SKIPPED})
EXTERNAL = StepKind.EXTERNAL.value
CHILD = StepKind.SAGA.value


def passed(records: Sequence[StepRecord]) -> bool:
    """Whether every record of a stage let the saga go on (succeeded, or was skipped)."""
    return all(m.status in PASSED for m in records)


def waiting_outside(record: StepRecord) -> bool:
    """An external step waiting for its completion, or a child saga step whose child runs.

    (A step its stage marked started but whose wait or child was not yet set up is
    neither: recovery dispatches it again.)
    """
    if record.status is not StepStatus.RUNNING:
        return False
    if record.kind == EXTERNAL:
        return record.lease_owner is not None
    return record.kind == CHILD and record.child_id is not None


def timed_out(record: StepRecord, now: float) -> bool:
    """Whether an external step waited past its timeout."""
    return (
        record.kind == EXTERNAL
        and record.status is StepStatus.RUNNING
        and record.lease_expires_at is not None
        and record.lease_expires_at <= now
    )


def was_started(record: StepRecord) -> bool:
    """True for a first attempt the store marked started when its stage was reached."""
    return (
        record.status is StepStatus.RUNNING and record.attempt == 1 and record.finished_at is None
    )


def members(
    definition: SagaDefinition, execution: SagaExecution, stage_index: int
) -> list[StepRecord]:
    """The records of one stage's steps."""
    return [execution.step(spec.index) for spec in definition.stages[stage_index].steps]


def deadline_passed(execution: SagaExecution, now: float) -> bool:
    """Whether a RUNNING execution is past its deadline."""
    return (
        execution.status is SagaStatus.RUNNING
        and bool(execution.deadline_at)
        and now > (execution.deadline_at or 0.0)
    )


class AfterStage(enum.Enum):
    """What follows once every member of a stage has finished."""

    EXPIRE = "expire"  # the deadline passed: turn to compensation first
    DISPATCH_NEXT = "dispatch_next"
    COMPLETE = "complete"
    COMPENSATE = "compensate"


def after_stage(
    definition: SagaDefinition, execution: SagaExecution, stage_index: int, now: float
) -> AfterStage:
    """The next move once stage `stage_index` has finished."""
    if deadline_passed(execution, now):
        return AfterStage.EXPIRE
    done = passed(members(definition, execution, stage_index))
    if execution.status is SagaStatus.RUNNING and done:
        if stage_index + 1 < len(definition.stages):
            return AfterStage.DISPATCH_NEXT
        return AfterStage.COMPLETE
    return AfterStage.COMPENSATE


def failure_of(records: Sequence[StepRecord]) -> tuple[str, int | None]:
    """The saga error (and failed step) that a stage's members explain."""
    failed = next((m for m in records if m.status is StepStatus.FAILED), None)
    if failed is None:
        return "a step of the saga did not run", None
    return f"step {failed.index} ({failed.task_name}) failed: {failed.error}", failed.index


def late_in(record: StepRecord, state: str) -> list[int]:
    """The superseded attempts of `record` whose late success is in `state`, newest first."""
    late = record.late or {}
    return sorted((int(a) for a, e in late.items() if e.get("state") == state), reverse=True)


def _compensable(record: StepRecord) -> bool:
    if record.kind == CHILD:
        return not record.no_compensation
    return not record.no_compensation and bool(record.compensation_task_name)


def final_status(execution: SagaExecution) -> SagaStatus:
    """The terminal status of an execution whose compensations are all done."""
    if any(
        s.status is StepStatus.COMPENSATION_FAILED or late_in(s, "compensation_failed")
        for s in execution.steps
    ):
        return SagaStatus.FAILED
    if execution.revert_reason is not None:
        return SagaStatus.REVERTED
    if execution.cancelled_at is not None:
        return SagaStatus.CANCELLED
    return SagaStatus.COMPENSATED


@dataclass(frozen=True)
class NextCompensation:
    """What a COMPENSATING execution does next.

    `drop`: retries waiting to run, to skip (nothing forward retries now); then,
    unless `wait` (a compensation or an in-flight step is under way, and its outcome
    calls again), undo the late success `compensate_late` (step, attempt) of a
    superseded attempt, or compensate step `compensate`, or end with `final`.
    """

    drop: tuple[int, ...] = ()
    wait: bool = False
    compensate: int | None = None
    final: SagaStatus | None = None
    compensate_late: tuple[int, int] | None = None


def next_compensation(execution: SagaExecution) -> NextCompensation | None:
    """The next compensation in reverse completion order (None: not compensating).

    Late successes of superseded attempts are undone first: they are the newest
    effects, and nothing else records them.
    """
    if execution.status is not SagaStatus.COMPENSATING:
        return None
    if any(
        s.status is StepStatus.COMPENSATING or late_in(s, "compensating") for s in execution.steps
    ):
        return NextCompensation(wait=True)
    drop = tuple(
        s.index
        for s in execution.steps
        if (s.status is StepStatus.PENDING and s.attempt > 0)
        or (s.kind == EXTERNAL and s.status is StepStatus.RUNNING)
    )
    if any(s.status is StepStatus.RUNNING and s.index not in drop for s in execution.steps):
        return NextCompensation(drop=drop, wait=True)
    order = sorted(execution.steps, key=lambda s: (s.stage, s.seq or 0, s.index), reverse=True)
    for record in order:
        recorded = late_in(record, "recorded") if _compensable(record) else []
        if recorded:
            return NextCompensation(drop=drop, compensate_late=(record.index, recorded[0]))
    todo = [s for s in order if s.needs_compensation]
    if not todo:
        return NextCompensation(drop=drop, final=final_status(execution))
    return NextCompensation(drop=drop, compensate=todo[0].index)


def can_hand_on(definition: SagaDefinition, index: int, deadline_passed: bool) -> bool:
    """Whether the context after step `index` is its input plus its output (no read needed).

    True for a step that is a stage of its own, given the whole context, when
    nothing after it transforms the context in a way its own worker cannot.
    """
    spec = definition.step(index)
    stages = definition.stages
    stage = stages[spec.stage]
    if len(stage.steps) != 1 or not isinstance(spec.input, ContextInput) or deadline_passed:
        return False
    if spec.stage + 1 < len(stages):
        return not any(
            isinstance(s.input, TransformInput) or not s.is_task or s.when is not None
            for s in stages[spec.stage + 1].steps
        )
    return definition.output is None or isinstance(definition.output, ContextSource)


class Gate(enum.Enum):
    """What a step attempt whose start write was refused does."""

    REFUSE = "refuse"  # finished, or a newer attempt owns the step: do not run
    WAIT = "wait"  # another process holds a live lease on this attempt: try again later
    IN_FLIGHT = "in_flight"  # started before the saga turned: may finish (not as a retry)
    SKIP = "skip"  # never started and the saga is no longer running: record it skipped


def refused_gate(
    status: StepStatus,
    attempt: int,
    saga_status: SagaStatus,
    my_attempt: int,
    retries: int,
    *,
    lease_owner: str | None = None,
    lease_expires_at: float | None = None,
    owner: str | None = None,
    now: float = 0.0,
) -> Gate:
    """Decide for an attempt whose start was refused, from the state the store reported.

    A copy of the attempt that another process runs under a live lease (a broker
    redelivery) waits; it takes over only once that lease has expired.
    """
    if status not in FORWARD or attempt > my_attempt:
        return Gate.REFUSE
    if (
        lease_owner is not None
        and lease_owner != owner
        and lease_expires_at is not None
        and lease_expires_at > now
        and status is StepStatus.RUNNING
        and attempt == my_attempt
    ):
        return Gate.WAIT
    if (
        status is StepStatus.RUNNING
        and retries == 0
        and saga_status in (SagaStatus.COMPENSATING, SagaStatus.PENDING)
    ):
        return Gate.IN_FLIGHT
    if saga_status is SagaStatus.RUNNING:
        # Refused for another reason (a lease) while the saga goes on: leave the step to
        # whoever holds it, or to recovery; skipping it would turn the saga back.
        return Gate.REFUSE
    return Gate.SKIP


@dataclass(frozen=True)
class Admission:
    """Whether an attempt may run its body now; if not, whether to try again in `wait` s."""

    run: bool
    wait: float | None = None


RUN = Admission(True)
REFUSE = Admission(False)


_SUCCEEDED = frozenset(
    {
        StepStatus.SUCCESS,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)


def is_late(status: StepStatus, attempt: int, my_attempt: int) -> bool:
    """Whether a success whose write was refused is a late one (to record, maybe undo).

    A copy of the attempt whose success the step records (and may since have
    compensated) is a mere duplicate of that effect; a success of a superseded
    attempt, or of one whose step ended otherwise (failed, skipped), did something
    nothing else records.
    """
    return not (status in _SUCCEEDED and attempt == my_attempt)


def lease_free(record: StepRecord, now: float, stalled_after: float) -> bool:
    """Whether nobody runs the record's current attempt, so recovery may take it over.

    An owned attempt is free once its lease has expired (its worker is gone or
    frozen). An attempt nobody has claimed was sent and not started: it is free once
    it has waited `stalled_after` seconds since it was due on the broker, twice that
    after one re-send, four times after two...: a backlog that outlasts the limit
    costs few duplicate sends, and a queue nobody consumes is still given up on.
    """
    if record.lease_owner is not None:
        return record.lease_expires_at is not None and record.lease_expires_at <= now
    sent = record.sent_at if record.sent_at is not None else record.started_at
    if record.status is StepStatus.COMPENSATING and record.sent_at is None:
        sent = record.comp_started_at
    return sent is None or sent <= now - stalled_after * 2 ** min(record.sends, 16)


class Recover(enum.Enum):
    """Kinds of move the recovery pass makes on one execution."""

    MISMATCH = "mismatch"  # started by another definition: left alone
    START = "start"  # PENDING: send the first stage
    EXPIRE = "expire"  # past its deadline: compensate
    REDISPATCH = "redispatch"  # forward attempts nobody runs: take them over, send again
    GIVE_UP = "give_up"  # sent too often and never started: fail those steps
    STAGE_FINISHED = "stage_finished"  # a stage's outcome was recorded, not acted on
    COMPLETE = "complete"  # every stage succeeded, completion not recorded
    RESEND_COMPENSATION = "resend_compensation"  # a compensation nobody runs: send again
    GIVE_UP_COMPENSATION = "give_up_compensation"  # a compensation sent too often
    REDISPATCH_IN_FLIGHT = "redispatch_in_flight"  # compensating, steps still in flight
    RESEND_LATE = "resend_late"  # the undoing of a late success was lost: send it again
    TIME_OUT = "time_out"  # external steps waited past their timeout: fail them
    CHILDREN = "children"  # child saga steps: look at their children (start, or take outcome)
    COMPENSATE_NEXT = "compensate_next"
    WAIT = "wait"  # attempts under live leases (or waiting for a worker): nothing to do yet
    NOTHING = "nothing"


@dataclass(frozen=True)
class Recovery:
    """One recovery move: its kind, and the stage or steps it concerns."""

    kind: Recover
    stage: int | None = None
    steps: tuple[int, ...] = ()
    late: int | None = None  # with RESEND_LATE: the superseded attempt whose effect is undone


def _take_over(
    records: Sequence[StepRecord], now: float, stalled_after: float, max_sends: int
) -> tuple[Recover, tuple[int, ...]] | None:
    """Among in-flight `records`, those nobody runs: give up on them or send them again."""
    free = [r for r in records if lease_free(r, now, stalled_after)]
    if not free:
        return None
    spent = tuple(r.index for r in free if r.sends >= max_sends)
    if spent:
        return Recover.GIVE_UP, spent
    return Recover.REDISPATCH, tuple(r.index for r in free)


def recovery(
    definition: SagaDefinition,
    execution: SagaExecution,
    now: float,
    *,
    stalled_after: float = 300.0,
    max_sends: int = 5,
) -> Recovery:
    """What the recovery pass does with an execution that made no progress for a while.

    Attempts under a live lease are left alone however long they run; attempts
    nobody runs are taken over (at most `max_sends` times, then they fail).
    """
    if execution.definition_hash != definition.hash:
        return Recovery(Recover.MISMATCH)
    status = execution.status
    if status is SagaStatus.PENDING:
        return Recovery(Recover.START)
    if deadline_passed(execution, now):
        return Recovery(Recover.EXPIRE)
    if status is SagaStatus.RUNNING:
        for stage in definition.stages:
            records = members(definition, execution, stage.index)
            if passed(records):
                continue
            late = tuple(m.index for m in records if timed_out(m, now))
            if late:
                return Recovery(Recover.TIME_OUT, stage.index, late)
            lost = [m for m in records if m.status in FORWARD and not waiting_outside(m)]
            if lost:
                move = _take_over(lost, now, stalled_after, max_sends)
                if move is not None:
                    return Recovery(move[0], stage.index, move[1])
            children = tuple(m.index for m in records if m.kind == CHILD and waiting_outside(m))
            if children:
                return Recovery(Recover.CHILDREN, stage.index, children)
            if lost or any(waiting_outside(m) for m in records):
                return Recovery(Recover.WAIT, stage.index)
            return Recovery(Recover.STAGE_FINISHED, stage.index)
        return Recovery(Recover.COMPLETE)
    if status is SagaStatus.COMPENSATING:
        for record in execution.steps:
            for attempt in late_in(record, "compensating"):
                sent = (record.late or {})[str(attempt)].get("sent_at")
                if not isinstance(sent, int | float) or sent <= now - stalled_after:
                    return Recovery(Recover.RESEND_LATE, steps=(record.index,), late=attempt)
        stalled = [
            s for s in execution.steps if s.status is StepStatus.COMPENSATING and s.kind != CHILD
        ]
        if stalled:
            record = stalled[0]
            if not lease_free(record, now, stalled_after):
                return Recovery(Recover.WAIT, steps=(record.index,))
            if record.sends >= max_sends:
                return Recovery(Recover.GIVE_UP_COMPENSATION, steps=(record.index,))
            return Recovery(Recover.RESEND_COMPENSATION, steps=(record.index,))
        children = tuple(
            s.index
            for s in execution.steps
            if s.kind == CHILD
            and s.child_id is not None
            and s.status in (StepStatus.COMPENSATING, StepStatus.RUNNING)
        )
        if children:
            return Recovery(Recover.CHILDREN, steps=children)
        if any(s.kind == EXTERNAL and s.status is StepStatus.RUNNING for s in execution.steps):
            return Recovery(Recover.COMPENSATE_NEXT)  # stops waiting for them
        in_flight = [s for s in execution.steps if s.status is StepStatus.RUNNING]
        by_stage = in_flight or dispatched_pending(definition, execution)
        if by_stage:
            first = by_stage[0].stage
            move = _take_over(
                [s for s in by_stage if s.stage == first], now, stalled_after, max_sends
            )
            if move is None:
                return Recovery(Recover.WAIT, first)
            kind = Recover.REDISPATCH_IN_FLIGHT if move[0] is Recover.REDISPATCH else move[0]
            return Recovery(kind, first, move[1])
        return Recovery(Recover.COMPENSATE_NEXT)
    return Recovery(Recover.NOTHING)


def dispatched_pending(definition: SagaDefinition, execution: SagaExecution) -> list[StepRecord]:
    """PENDING steps of the first unfinished stage that was dispatched (its count started)."""
    for stage in definition.stages:
        records = members(definition, execution, stage.index)
        pending = [m for m in records if m.status is StepStatus.PENDING]
        if not pending:
            continue
        if len(pending) < len(records):
            return pending  # some members moved: the stage was dispatched
        return []
    return []
