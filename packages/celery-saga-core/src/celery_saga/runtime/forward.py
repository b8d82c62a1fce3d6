"""A step's attempt from its own worker: started, succeeded, failed, retried, handed on.

Called by the step wrapper (`instrument`) in the process that ran the step, and by
reply tasks for steps named by task name. Each records the outcome with one
compare-and-set, then leaves what follows to the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery_saga import signals
from celery_saga.backends.base import StepExpect, StepWrite
from celery_saga.context import (
    InputResolutionError,
    step_input,
    with_final_transforms,
    with_stage_transforms,
)
from celery_saga.errors import PermanentFailure, StepOutputError
from celery_saga.headers import SagaHeader
from celery_saga.models import SagaExecution, SagaStatus, StepStatus, now
from celery_saga.response import ensure_json
from celery_saga.retry import error_types
from celery_saga.runtime import decide, driver, history, leases, messages
from celery_saga.runtime.binding import Runtime, describe_error
from celery_saga.runtime.decide import FORWARD, REFUSE, RUN, Admission, Gate
from celery_saga.runtime.log import log
from celery_saga.runtime.workers import worker_name


def step_started(
    rt: Runtime, header: SagaHeader, task_id: str | None, retries: int = 0, copy: bool = False
) -> Admission:
    """Gate before a step's body runs: may this attempt run, now or later?

    Records the attempt as started under this process's lease. Refused when the step
    already finished or a newer attempt owns it; put off while another process runs
    this same attempt under a live lease (a redelivered copy). When the saga is no
    longer RUNNING (a sibling failed, it was cancelled, its deadline passed) a step
    that had not started is recorded as skipped; one that had started and lost its
    worker may finish (it is in flight), but never as a retry. `copy`: a redelivered
    copy of a message its stage marked started (the first may run unclaimed).
    """
    if header.deadline_passed:
        driver.expire(rt, header.saga_id)
    t = now()
    owner = leases.owner_of(task_id or header.task_id)
    seconds = leases.lease_seconds(rt.app)
    if copy:
        wait = _unclaimed_wait(rt, header, t, seconds)
        if wait is not None:
            return Admission(False, wait)
    changes = {
        "status": StepStatus.RUNNING,
        "attempt": header.attempt,
        "task_id": task_id or header.task_id,
        "started_at": t,
        "retries": retries,
        "lease_owner": owner,
        "lease_expires_at": t + seconds,
        "worker": worker_name(),
    }
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        changes,
        expect=StepExpect(
            status=FORWARD,
            attempt_at_most=header.attempt,
            saga_status=driver.RUNNING,
            lease_free_at=t,
            lease_holder=owner,
        ),
    )
    if write.applied:
        return RUN
    gate = decide.refused_gate(
        write.status,
        write.attempt,
        write.saga_status,
        header.attempt,
        retries,
        lease_owner=write.lease_owner,
        lease_expires_at=write.lease_expires_at,
        owner=owner,
        now=t,
    )
    if gate is Gate.WAIT:
        assert write.lease_expires_at is not None
        log(
            logging.INFO,
            header.saga_id,
            header.index,
            "attempt %s runs elsewhere (%s): waiting for its lease",
            header.attempt,
            write.lease_owner,
        )
        return Admission(False, write.lease_expires_at - t + 0.1)
    if gate is Gate.REFUSE:
        log(
            logging.INFO,
            header.saga_id,
            header.index,
            "attempt %s not run: step is %s at attempt %s",
            header.attempt,
            write.status.value,
            write.attempt,
        )
        return REFUSE
    if gate is Gate.IN_FLIGHT:
        again = rt.backend.update_step(
            header.saga_id,
            header.index,
            changes,
            expect=StepExpect(
                status=frozenset({StepStatus.RUNNING}),
                attempt_at_most=header.attempt,
                lease_free_at=t,
                lease_holder=owner,
            ),
        )
        if again.applied:
            return RUN
    driver.finish(
        rt,
        header.saga_id,
        header.index,
        header.attempt,
        StepStatus.SKIPPED,
        {"error": f"not started: saga was {write.saga_status.value}"},
    )
    return REFUSE


def _unclaimed_wait(rt: Runtime, header: SagaHeader, t: float, seconds: float) -> float | None:
    """For a copy of an attempt its stage marked started: how long it may still run unclaimed.

    Such an attempt runs without a start write and is claimed by its worker's first
    heartbeat, within a third of a lease. A copy (a broker redelivery) that arrives
    sooner than one lease after the send waits, so the two never run at once.
    """
    execution = rt.backend.get(header.saga_id)
    if execution is None:
        return None
    record = execution.step(header.index)
    if (
        record.lease_owner is not None
        or record.status is not StepStatus.RUNNING
        or record.attempt != header.attempt
    ):
        return None
    sent = record.sent_at if record.sent_at is not None else record.started_at
    if sent is None or sent + seconds <= t:
        return None
    return sent + seconds - t


def step_succeeded(
    rt: Runtime,
    header: SagaHeader,
    output: dict[str, Any],
    compensation_data: Any,
    started_at: float | None = None,
    inputs: dict[str, Any] | None = None,
) -> None:
    """Record a step's output; the stage's last member moves the saga on.

    `inputs` (the step's keyword arguments, when its worker has them) lets a step
    that is a stage of its own hand on the context without reading it back: for a
    step given the whole context, the next context is its input plus its output.
    """
    changes = {
        "status": StepStatus.SUCCESS,
        "output": output,
        "compensation_data": compensation_data,
        "finished_at": now(),
        "error": None,
        "attempt": header.attempt,
        "worker": worker_name(),
    }
    if started_at is not None:
        changes["started_at"] = started_at
    same_definition = header.definition_hash in ("", rt.definition.hash)
    if inputs is not None and same_definition:
        write = _hand_on(rt, header, changes, inputs, output)
        if write is not None:
            if not write.applied:
                late_success(rt, header, write, output, compensation_data)
            return
    write = driver.finish(
        rt,
        header.saga_id,
        header.index,
        header.attempt,
        StepStatus.SUCCESS,
        changes,
        start_next=same_definition,
    )
    if not write.applied:
        late_success(rt, header, write, output, compensation_data)


def late_success(
    rt: Runtime, header: SagaHeader, write: StepWrite, output: Any, compensation_data: Any
) -> None:
    """Record the success of a superseded attempt; undo it if the saga is turning back.

    Its write was refused (a newer attempt owns the step, or the step ended
    otherwise), yet its side effect happened: it is kept on the step, never dropped,
    and compensated once if the saga compensates (a finished compensated saga is
    reopened for it). A saga that completes keeps it as recorded: the step's own
    idempotency key let the participant see it as a duplicate.
    """
    if not decide.is_late(write.status, write.attempt, header.attempt):
        return
    late = rt.backend.record_late(
        header.saga_id,
        header.index,
        header.attempt,
        {
            "state": "recorded",
            "output": output,
            "compensation_data": compensation_data,
            "finished_at": now(),
        },
    )
    if not late.applied:
        return  # a duplicate of a late success already recorded
    log(
        logging.WARNING,
        header.saga_id,
        header.index,
        "late success of superseded attempt %s recorded (step is %s at attempt %s)",
        header.attempt,
        write.status.value,
        write.attempt,
    )
    spec = rt.definition.step(header.index)
    if spec.no_compensation or not spec.compensation_name:
        return
    status = late.saga_status
    if status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED, SagaStatus.FAILED):
        reopened = rt.backend.update_saga(
            header.saga_id,
            {"status": SagaStatus.COMPENSATING, "finished_at": None},
            expect_status={status},
        )
        if not reopened:
            return
        log(logging.WARNING, header.saga_id, None, "reopened to undo a late success")
    elif status is not SagaStatus.COMPENSATING:
        return
    driver.compensate_next(rt, header.saga_id)


def _hand_on(
    rt: Runtime,
    header: SagaHeader,
    changes: dict[str, Any],
    inputs: dict[str, Any],
    output: dict[str, Any],
) -> StepWrite | None:
    """Finish a single-step stage and start the next from its own input and output.

    One write records the outcome and marks the next stage started (or, for the last
    stage, ends the saga); nothing is read back. Returns the write, or None (having
    done nothing) when this shortcut does not apply.
    """
    if not decide.can_hand_on(rt.definition, header.index, header.deadline_passed):
        return None
    spec = rt.definition.step(header.index)
    last = spec.stage + 1 >= len(rt.definition.stages)
    context = {**inputs, **output}
    if last and not header.child:
        try:
            final = with_final_transforms(rt.definition, context)
            ensure_json(final, f"the output of saga {header.saga_name!r}", "saga output")
        except (InputResolutionError, StepOutputError):
            final = None  # the general path records it and explains
        if final is not None:
            return _finish(rt, header, changes, output, spec.stage, final)
    write, _ = rt.backend.update_step_and_get(
        header.saga_id,
        header.index,
        changes,
        expect=StepExpect(status=FORWARD, attempt_at_most=header.attempt),
        count_in=f"stage:{spec.stage}",
        get_at=1,
        start_next=None if last else messages.start_next(rt, header.saga_id, spec.stage),
        read=False,
    )
    if not write.applied:
        return write  # a duplicate, or a late success: the caller tells which
    signals.step_succeeded.send(
        sender=rt.definition.name, saga_id=header.saga_id, step=header.index, output=output
    )
    if last:  # a child saga's end is told to its parent; a bad final output is explained
        driver.stage_finished(rt, header.saga_id, spec.stage)
        return write
    shell = _shell(header)
    nxt = rt.definition.stages[spec.stage + 1]
    if {s.index for s in nxt.steps} != set(write.started):
        driver.stage_finished(rt, header.saga_id, spec.stage)  # the saga stopped: read, decide
        return write
    try:
        context = with_stage_transforms(nxt, context)
        kwargs = {s.index: step_input(s, context, shell) for s in nxt.steps}
        for s in nxt.steps:
            what = f"the input of step {s.index} ({s.task_name})"
            ensure_json(kwargs[s.index], what, "step input")
    except (InputResolutionError, StepOutputError) as exc:
        for s in nxt.steps:
            driver.fail_unstartable(rt, header.saga_id, s.index, 1, str(exc))
        return write
    started = [s.index for s in nxt.steps]
    messages.send_steps(rt, shell, [(i, 1) for i in started], kwargs, started=started)
    return write


def _finish(
    rt: Runtime,
    header: SagaHeader,
    changes: dict[str, Any],
    output: dict[str, Any],
    stage: int,
    final: Any,
) -> StepWrite:
    """The last step's outcome and the saga's end (COMPLETED with `final`) in one write."""
    write, finished = rt.backend.update_step_and_finish(
        header.saga_id,
        header.index,
        changes,
        driver.completion(final),
        expect=StepExpect(status=FORWARD, attempt_at_most=header.attempt),
        count_in=f"stage:{stage}",
    )
    if not write.applied:
        return write  # a duplicate, or a late success: the caller tells which
    signals.step_succeeded.send(
        sender=rt.definition.name, saga_id=header.saga_id, step=header.index, output=output
    )
    if finished:
        driver.completed(rt, _shell(header), final)
    else:  # cancelled or failed meanwhile
        driver.compensate_next(rt, header.saga_id)
    return write


def _shell(header: SagaHeader) -> SagaExecution:
    """What the next messages and the end hooks need of the execution, from the header."""
    return SagaExecution(
        saga_id=header.saga_id,
        saga_name=header.saga_name,
        queue=header.run_queue,
        deadline_at=header.deadline_at,
        status=SagaStatus.RUNNING,
        # Only whether there is a parent matters to the next messages (their header).
        parent_id=header.saga_id if header.child else None,
        trace_context=header.trace,
    )


def step_failed(
    rt: Runtime,
    header: SagaHeader,
    error: str,
    compensation_data: Any = None,
    error_names: Sequence[str] = (),
    started_at: float | None = None,
    exc: BaseException | None = None,
) -> None:
    """Record a step's final failure (or retry it, if its policy says so).

    `exc`, the exception the step raised when it did not fail on purpose, puts its
    traceback in the one WARNING that logs the final failure.
    """
    if _retry_step(rt, header, error, error_names, started_at):
        return
    changes: dict[str, Any] = {"error": error, "attempt": header.attempt, "worker": worker_name()}
    if started_at is not None:
        changes["started_at"] = started_at
    if compensation_data is not None:
        changes["compensation_data"] = compensation_data
    driver.finish(
        rt,
        header.saga_id,
        header.index,
        header.attempt,
        StepStatus.FAILED,
        changes,
        failing=True,
        exc_info=exc,
    )


def _retry_step(
    rt: Runtime,
    header: SagaHeader,
    error: str,
    error_names: Sequence[str],
    started_at: float | None = None,
) -> bool:
    """Dispatch the step again as a new attempt when its RetryPolicy allows it.

    The failed attempt goes to the step's history, "retried". The record is read first
    (for its history, and for the inputs the new attempt is sent with); the write's
    expectation on the attempt keeps that history current, since it changes only with it.
    """
    policy = rt.definition.step(header.index).retry
    if policy is None or header.attempt > policy.max_retries or not policy.retries(error_names):
        return False
    attempt = header.attempt + 1
    delay = policy.delay(header.attempt)
    execution = rt.backend.get(header.saga_id)
    if execution is None:
        raise KeyError(f"no saga {header.saga_id}")  # what the write would raise
    record = execution.step(header.index)
    past = history.forward_over(
        record,
        "retried",
        error,
        attempt=header.attempt,
        started_at=started_at,
        worker=worker_name(),
    )
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {
            **leases.fresh_lease(now() + delay),
            "status": StepStatus.PENDING,
            "attempt": attempt,
            "error": error,
            "worker": None,
            "history": past,
        },
        expect=StepExpect(status=FORWARD, attempt=header.attempt, saga_status=driver.RUNNING),
    )
    if not write.applied:
        return write.status is StepStatus.PENDING and write.attempt == attempt  # already done
    log(
        logging.WARNING,
        header.saga_id,
        header.index,
        "attempt %s failed (%s); retrying in %.2fs",
        header.attempt,
        error,
        delay,
    )
    record.status, record.attempt, record.history = StepStatus.PENDING, attempt, past
    driver.redispatch(rt, execution, [record], countdown=delay, bump=False)
    return True


def _eager_step_failure(rt: Runtime, header: SagaHeader, exc: Exception) -> None:
    data = exc.compensation_data if isinstance(exc, PermanentFailure) else None
    step_failed(rt, header, describe_error(exc), data, error_types(exc))


messages.on_eager_failure(compensation=False, handler=_eager_step_failure)
