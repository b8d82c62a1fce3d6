"""The driver: the store writes and sends that move an execution from one state to the next.

The step and compensation handlers, `start`, recovery and operator actions record
what happened, then call in here; what to do next is asked of `decide` and done
here, in one place. Every write is a compare-and-set, so a duplicated call changes
nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery_saga import signals
from celery_saga.backends.base import StepExpect, StepWrite
from celery_saga.context import InputResolutionError, saga_output
from celery_saga.errors import SagaDefinitionMismatch, StepOutputError
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, StepStatus, now
from celery_saga.response import ensure_json
from celery_saga.runtime import decide, history, hooks, leases, messages
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.decide import FORWARD, AfterStage
from celery_saga.runtime.log import log

RUNNING = frozenset({SagaStatus.RUNNING})
COMPENSATING_STEP = frozenset({StepStatus.COMPENSATING})

# -- forward ------------------------------------------------------------------------------------


def dispatch_stage(rt: Runtime, execution: SagaExecution, stage_index: int) -> None:
    """Evaluate the stage's conditions, compute each step's input, and start its steps.

    Steps whose condition is false are SKIPPED; task steps are sent as messages,
    the others begin through their kind's starter (an external step waits, a child
    saga starts).
    """
    stage = rt.definition.stages[stage_index]
    indexes = [spec.index for spec in stage.steps]
    skipped, failures, ctx = messages.conditions(rt, execution, stage_index)
    run = [i for i in indexes if i not in skipped]
    kwargs: dict[int, dict[str, Any]] = {}
    if not failures:
        kwargs, failures = messages.inputs(rt, execution, stage_index, run, ctx)
    if failures:
        # Nothing of this stage is sent: the failing inputs fail their steps, the rest
        # are skipped, and the stage's last member starts the compensation.
        for index in indexes:
            attempt = messages.next_attempt(execution.step(index))
            if index in failures:
                fail_unstartable(rt, execution.saga_id, index, attempt, failures[index])
            else:
                finish(
                    rt,
                    execution.saga_id,
                    index,
                    attempt,
                    StepStatus.SKIPPED,
                    {"error": "not started: another step of its stage could not start"},
                )
        return
    for index in skipped:
        attempt = messages.next_attempt(execution.step(index))
        finish(rt, execution.saga_id, index, attempt, StepStatus.SKIPPED, {"output": None})
    started = {i for i in run if decide.was_started(execution.step(i))}
    attempts = [(i, messages.next_attempt(execution.step(i))) for i in run]
    _begin(rt, execution, attempts, kwargs, started=started)


def _begin(
    rt: Runtime,
    execution: SagaExecution,
    attempts: Sequence[tuple[int, int]],
    kwargs: dict[int, dict[str, Any]],
    *,
    started: set[int] | None = None,
    countdown: float | None = None,
) -> None:
    """Send the task steps of `attempts` in one go; begin the others through their starter."""
    kinds = {i: rt.definition.step(i).kind for i, _ in attempts}
    tasks = [(i, a) for i, a in attempts if kinds[i] == "task"]
    if tasks:
        messages.send_steps(
            rt, execution, tasks, kwargs, started=started or set(), countdown=countdown
        )
    for index, attempt in attempts:
        if kinds[index] != "task":
            hooks.start(kinds[index], rt, execution, index, attempt, kwargs[index])


def redispatch(
    rt: Runtime,
    execution: SagaExecution,
    records: Sequence[StepRecord],
    countdown: float | None = None,
    *,
    bump: bool = True,
) -> list[int]:
    """Send steps again as new attempts (the store fences the old ones); return the indexes.

    Each is taken over by compare-and-set: only if nobody holds a live lease on its
    attempt; the attempt given up goes to the step's history ("taken_over"). With
    ``bump=False`` the records already carry their new attempt (a retry).
    """
    if not records:
        return []
    stage_index = records[0].stage
    sent: list[tuple[int, int]] = []
    for record in records:
        if not bump:
            sent.append((record.index, record.attempt))
            continue
        attempt = max(record.attempt, 1) + 1
        write = rt.backend.take_over(
            execution.saga_id,
            record.index,
            {
                **leases.fresh_lease(now() + (countdown or 0.0)),
                "attempt": attempt,
                "sends": record.sends + 1,
                "worker": None,
                "history": history.taken_over(record),
            },
            attempt=record.attempt,
            now=now(),
        )
        if write.applied:
            sent.append((record.index, attempt))
    if not sent:
        return []
    kwargs, failures = messages.inputs(rt, execution, stage_index, [i for i, _ in sent])
    for index, attempt in sent:
        if index in failures:
            fail_unstartable(rt, execution.saga_id, index, attempt, failures[index])
    attempts = [(i, a) for i, a in sent if i not in failures]
    _begin(rt, execution, attempts, kwargs, countdown=countdown)
    return [i for i, _ in sent]


def give_up(rt: Runtime, execution: SagaExecution, index: int) -> bool:
    """Fail a step that recovery sent `saga_recovery_max_sends` times and no worker started."""
    record = execution.step(index)
    error = (
        f"no worker started task {record.task_name!r} from queue "
        f"{messages.step_queue(rt, execution, index)!r} after {record.sends + 1} sends: start a "
        "worker that consumes that queue and has the task (or fix the task's name or route)"
    )
    return finish(
        rt, execution.saga_id, index, record.attempt, StepStatus.FAILED, {"error": error},
        failing=True,
    ).applied  # fmt: skip


def give_up_compensation(rt: Runtime, execution: SagaExecution, index: int) -> bool:
    """Fail a compensation that recovery sent too often with no worker starting it."""
    record = execution.step(index)
    queue = messages.step_queue(rt, execution, index, compensation=True)
    error = (
        f"no worker started compensation {record.compensation_task_name!r} from queue "
        f"{queue!r} after {record.sends + 1} sends: start a worker for that queue, then "
        "`celery saga retry`"
    )
    write = rt.backend.update_step(
        execution.saga_id,
        index,
        {"status": StepStatus.COMPENSATION_FAILED, "comp_error": error, "comp_finished_at": now()},
        expect=StepExpect(status=COMPENSATING_STEP, comp_attempt=record.comp_attempt),
    )
    if write.applied:
        log(logging.ERROR, execution.saga_id, index, "%s", error)
        compensate_next(rt, execution.saga_id)
    return write.applied


def fail_unstartable(rt: Runtime, saga_id: str, index: int, attempt: int, error: str) -> None:
    """A step whose input could not be computed fails without being sent."""
    finish(rt, saga_id, index, attempt, StepStatus.FAILED, {"error": error}, failing=True)


def finish(
    rt: Runtime,
    saga_id: str,
    index: int,
    attempt: int,
    status: StepStatus,
    changes: dict[str, Any],
    *,
    failing: bool = False,
    start_next: bool = True,
    exc_info: BaseException | None = None,
) -> StepWrite:
    """End a step's forward part once; the write tells whether this call was the one.

    A success that completes its stage also marks the next stage started, in the
    same write, unless `start_next` is false (the message came from a different
    definition, which this worker will not advance). `exc_info`: an exception whose
    traceback goes with the log line of the outcome.
    """
    spec = rt.definition.step(index)
    stage_size = len(rt.definition.stages[spec.stage].steps)
    write, execution = rt.backend.update_step_and_get(
        saga_id,
        index,
        {**changes, "status": status, "finished_at": changes.get("finished_at") or now()},
        expect=StepExpect(status=FORWARD, attempt_at_most=attempt),
        count_in=f"stage:{spec.stage}",
        get_at=None if failing else stage_size,
        start_next=(
            messages.start_next(rt, saga_id, spec.stage)
            if start_next and status is StepStatus.SUCCESS
            else None
        ),
    )
    if not write.applied:
        log(
            logging.DEBUG,
            saga_id,
            index,
            "outcome %s of attempt %s ignored: step is %s",
            status.value,
            attempt,
            write.status.value,
        )
        return write
    log(
        logging.INFO if status is StepStatus.SUCCESS else logging.WARNING,
        saga_id,
        index,
        "step %s %s%s",
        spec.task_name,
        status.value,
        f": {changes.get('error')}" if failing else "",
        exc_info=exc_info,
    )
    if status is StepStatus.SUCCESS:
        signals.step_succeeded.send(
            sender=rt.definition.name, saga_id=saga_id, step=index, output=changes.get("output")
        )
    elif status is StepStatus.FAILED:
        signals.step_failed.send(
            sender=rt.definition.name, saga_id=saga_id, step=index, error=changes.get("error")
        )
    if failing:
        rt.backend.update_saga(
            saga_id,
            {
                "status": SagaStatus.COMPENSATING,
                "error": f"step {index} ({spec.task_name}) failed: {changes.get('error')}",
                "failed_step": index,
            },
            expect_status=RUNNING,
        )
    if write.count == stage_size:
        # A failing last member turned the saga to COMPENSATING just above, so it
        # reads the execution after that write; a succeeding one got it with its own.
        stage_finished(rt, saga_id, spec.stage, execution)
    return write


def stage_finished(
    rt: Runtime, saga_id: str, stage_index: int, execution: SagaExecution | None = None
) -> None:
    """Every member of a stage has finished: advance, complete, or compensate."""
    if execution is None:
        execution = rt.backend.get(saga_id)
    if execution is None or not same_definition(rt, execution):
        return
    move = decide.after_stage(rt.definition, execution, stage_index, now())
    if move is AfterStage.EXPIRE:
        expire(rt, saga_id)
        unstart(rt, execution, stage_index + 1)
        execution = rt.backend.get(saga_id) or execution
        move = decide.after_stage(rt.definition, execution, stage_index, now())
    if move is AfterStage.DISPATCH_NEXT:
        dispatch_stage(rt, execution, stage_index + 1)
    elif move is AfterStage.COMPLETE:
        complete(rt, execution)
    else:
        begin_compensation(rt, execution, decide.members(rt.definition, execution, stage_index))


def unstart(rt: Runtime, execution: SagaExecution, stage_index: int) -> None:
    """Skip a next stage that was marked started but will not be sent after all."""
    if stage_index >= len(rt.definition.stages):
        return
    for spec in rt.definition.stages[stage_index].steps:
        if decide.was_started(execution.step(spec.index)):
            finish(
                rt,
                execution.saga_id,
                spec.index,
                1,
                StepStatus.SKIPPED,
                {"error": "not started: the saga stopped before this stage was sent"},
            )


def same_definition(rt: Runtime, execution: SagaExecution) -> bool:
    """Whether this worker's definition started `execution` (if not, say so on the record)."""
    if execution.definition_hash == rt.definition.hash:
        return True
    error = SagaDefinitionMismatch(
        f"saga {execution.saga_name} {execution.saga_id} was started by definition "
        f"{execution.definition_hash} but this worker has {rt.definition.hash}: it will not "
        "guess how to go on. Run a worker with the original definition (or let old "
        "executions finish before deploying a changed saga), then `celery saga recover`."
    )
    log(logging.ERROR, execution.saga_id, None, "%s", error)
    rt.backend.update_saga(execution.saga_id, {"error": str(error)})
    return False


def complete(rt: Runtime, execution: SagaExecution) -> None:
    """All stages succeeded: store the output and mark the saga COMPLETED."""
    try:
        output = saga_output(rt.definition, execution)
        ensure_json(output, f"the output of saga {execution.saga_name!r}", "saga output")
    except (InputResolutionError, StepOutputError) as exc:
        if rt.backend.update_saga(
            execution.saga_id,
            {"status": SagaStatus.COMPENSATING, "error": str(exc)},
            expect_status=RUNNING,
        ):
            compensate_next(rt, execution.saga_id)
        return
    complete_with(rt, execution, output)


def completion(output: Any) -> dict[str, Any]:
    """The execution's changes that mark it COMPLETED with `output`."""
    return {"status": SagaStatus.COMPLETED, "output": output, "finished_at": now()}


def complete_with(rt: Runtime, execution: SagaExecution, output: Any) -> None:
    """Mark the saga COMPLETED with `output` (or, if it turned meanwhile, compensate)."""
    if rt.backend.update_saga(execution.saga_id, completion(output), expect_status=RUNNING):
        completed(rt, execution, output)
    else:  # cancelled or failed meanwhile
        compensate_next(rt, execution.saga_id)


def completed(rt: Runtime, execution: SagaExecution, output: Any) -> None:
    """What follows a saga's COMPLETED write: the log line, the signal, the hooks."""
    log(logging.INFO, execution.saga_id, None, "saga %s completed", execution.saga_name)
    signals.saga_completed.send(
        sender=execution.saga_name, saga_id=execution.saga_id, output=output
    )
    hooks.ended(rt, execution, SagaStatus.COMPLETED, output)


# -- backward -----------------------------------------------------------------------------------


def revert(rt: Runtime, saga_id: str, reason: str) -> bool:
    """Compensate a COMPLETED saga's steps in reverse order; it ends REVERTED.

    False (nothing done) unless the saga was COMPLETED.
    """
    if not rt.backend.update_saga(
        saga_id,
        {"status": SagaStatus.COMPENSATING, "revert_reason": reason, "finished_at": None},
        expect_status={SagaStatus.COMPLETED},
    ):
        return False
    log(logging.WARNING, saga_id, None, "reverting: %s", reason)
    compensate_next(rt, saga_id)
    return True


def expire(rt: Runtime, saga_id: str) -> bool:
    """The saga's deadline passed: turn it to compensation (once)."""
    deadline = rt.definition.deadline
    turned = rt.backend.update_saga(
        saga_id,
        {
            "status": SagaStatus.COMPENSATING,
            "error": f"deadline exceeded: not completed within {deadline}s",
        },
        expect_status=RUNNING,
    )
    if turned:
        log(logging.WARNING, saga_id, None, "deadline of %ss exceeded: compensating", deadline)
        hooks.cancelled(rt, saga_id, f"deadline of {deadline}s exceeded")  # its children stop too
        compensate_next(rt, saga_id)
    return turned


def begin_compensation(rt: Runtime, execution: SagaExecution, records: list[StepRecord]) -> None:
    """Turn the saga to COMPENSATING (if a failure has not already) and start undoing."""
    if execution.status is SagaStatus.RUNNING:
        error, failed_step = decide.failure_of(records)
        rt.backend.update_saga(
            execution.saga_id,
            {"status": SagaStatus.COMPENSATING, "error": error, "failed_step": failed_step},
            expect_status=RUNNING,
        )
    compensate_next(rt, execution.saga_id)


def compensate_next(rt: Runtime, saga_id: str) -> None:
    """Dispatch the next compensation in reverse completion order, or finish the saga."""
    execution = rt.backend.get(saga_id)
    if execution is None:
        return
    move = decide.next_compensation(execution)
    if move is None:
        return
    for index in move.drop:
        finish(
            rt,
            saga_id,
            index,
            execution.step(index).attempt,
            StepStatus.SKIPPED,
            {"error": "retry dropped: the saga is compensating"},
        )
    if move.wait:
        return
    if move.final is not None:
        finalize(rt, execution, move.final)
        return
    if move.compensate_late is not None:
        compensate_late(rt, execution, *move.compensate_late)
        return
    assert move.compensate is not None
    record = execution.step(move.compensate)
    undo = hooks.undoer(record.kind)
    if undo is not None:
        undo(rt, execution, record)
        return
    attempt = record.comp_attempt + 1
    write = rt.backend.update_step(
        saga_id,
        record.index,
        {**leases.fresh_lease(now()), "status": StepStatus.COMPENSATING, "comp_attempt": attempt},
        expect=StepExpect(status=frozenset({record.status}), comp_attempt=record.comp_attempt),
    )
    if write.applied:
        messages.send_compensation(rt, execution, record, attempt, round_start=attempt)


def compensate_late(rt: Runtime, execution: SagaExecution, index: int, attempt: int) -> None:
    """Undo the late success of superseded attempt `attempt` of step `index`."""
    write = rt.backend.record_late(
        execution.saga_id,
        index,
        attempt,
        {"state": "compensating", "comp_attempt": 1, "sent_at": now()},
        expect_state="recorded",
    )
    if write.applied:
        messages.send_late_compensation(rt, execution, index, attempt, 1)


def resend_late(rt: Runtime, execution: SagaExecution, index: int, attempt: int) -> bool:
    """Send again the compensation of a late success whose message was lost.

    Such compensations hold no lease: they are rare, and the queue-wait limit
    (`saga_recovery_stalled_after`) is what tells a lost one.
    """
    entry = (execution.step(index).late or {}).get(str(attempt)) or {}
    comp_attempt = int(entry.get("comp_attempt") or 1) + 1
    write = rt.backend.record_late(
        execution.saga_id,
        index,
        attempt,
        {"comp_attempt": comp_attempt, "sent_at": now()},
        expect_state="compensating",
    )
    if write.applied:
        messages.send_late_compensation(rt, execution, index, attempt, comp_attempt)
    return write.applied


def finalize(rt: Runtime, execution: SagaExecution, status: SagaStatus) -> None:
    """Every compensation is done: record the final status (once) and tell receivers."""
    if not rt.backend.update_saga(
        execution.saga_id,
        {"status": status, "finished_at": now()},
        expect_status={SagaStatus.COMPENSATING},
    ):
        return
    failed = status is SagaStatus.FAILED
    log(
        logging.WARNING if failed else logging.INFO,
        execution.saga_id,
        None,
        "saga %s %s",
        execution.saga_name,
        status.value,
    )
    signal = {
        SagaStatus.FAILED: signals.saga_failed,
        SagaStatus.CANCELLED: signals.saga_cancelled,
        SagaStatus.REVERTED: signals.saga_reverted,
    }.get(status, signals.saga_compensated)
    signal.send(sender=execution.saga_name, saga_id=execution.saga_id, error=execution.error)
    hooks.ended(rt, execution, status, None)
