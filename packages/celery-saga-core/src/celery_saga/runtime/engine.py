"""The saga state machine: every transition is a compare-and-set in the store.

Called from the step's own worker (task objects), from reply tasks (steps named by
task name), from `Saga.run()`, and from the recovery pass and operator commands.
Because each transition is a conditional write, a redelivered or duplicated
message changes nothing twice: a step finishes once, a stage advances once (the
store's counter names its last member), and each compensation runs once per step
that needs it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery_saga import registry, signals
from celery_saga.backends.base import SagaBackend, StartNext, StepExpect
from celery_saga.compiler import compensation_signature, header_of_signature, step_signature
from celery_saga.config import backend_for, setting
from celery_saga.context import (
    InputResolutionError,
    context_before,
    saga_output,
    step_input,
    with_final_transforms,
    with_stage_transforms,
)
from celery_saga.definition import ContextInput, ContextSource, TransformInput
from celery_saga.errors import PermanentFailure, SagaDefinitionMismatch, StepOutputError
from celery_saga.ids import new_saga_id, step_task_id, validate_idempotency_key
from celery_saga.models import (
    SagaExecution,
    SagaStatus,
    StepRecord,
    StepStatus,
    now,
)
from celery_saga.response import ensure_json, normalize_result
from celery_saga.result import SagaResult
from celery_saga.retry import error_types
from celery_saga.runtime.dispatch import send
from celery_saga.runtime.log import log

if TYPE_CHECKING:
    from collections.abc import Sequence

    from celery import Celery, Signature

    from celery_saga.builder import Saga
    from celery_saga.definition import SagaDefinition
    from celery_saga.headers import SagaHeader

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})
_RUNNING = frozenset({SagaStatus.RUNNING})
_COMPENSATING = frozenset({StepStatus.COMPENSATING})
_MAX_ERROR = 4000


@dataclass(frozen=True)
class Runtime:
    """A saga's definition together with the store and app it runs on."""

    saga: Saga
    definition: SagaDefinition
    backend: SagaBackend

    @property
    def app(self) -> Celery:
        """The Celery app the saga's messages are sent on."""
        return self.definition.app

    @classmethod
    def of(cls, saga: Saga) -> Runtime:
        """The runtime of a saga object (kept on it until its definition changes)."""
        definition = saga.definition
        cached: Runtime | None = saga.__dict__.get("_runtime")
        if cached is None or cached.definition is not definition:
            cached = cls(saga, definition, backend_for(definition.app, saga.backend))
            saga.__dict__["_runtime"] = cached
        return cached

    @classmethod
    def for_header(cls, header: SagaHeader, app: Celery | None = None) -> Runtime:
        """The runtime of the saga a message belongs to (SagaNotRegistered if unknown here)."""
        return cls.of(registry.lookup(header.saga_name, app))


def describe_error(exc: BaseException) -> str:
    """A one-line description of an exception for the store."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def outcome_of(rt: Runtime, header: SagaHeader, value: Any) -> tuple[dict[str, Any], Any]:
    """A step's return value as (output, compensation data), checked for JSON and size.

    Raises StepOutputError naming the step when either cannot be stored.
    """
    output, compensation_data = normalize_result(value)
    name = rt.definition.step(header.index).task_name
    text = ensure_json(output, f"the output of step {header.index} ({name})")
    comp_text = ensure_json(
        compensation_data, f"the compensation data of step {header.index} ({name})"
    )
    limit = setting(rt.app, "saga_output_max_bytes")
    size = len(text.encode()) + len(comp_text.encode())
    if limit and size > int(limit):
        raise StepOutputError(
            f"the output of step {header.index} ({name}) is {size} bytes with its compensation "
            f"data, over the saga_output_max_bytes limit of {limit}: keep large data elsewhere "
            "and return a reference to it (or raise the limit)"
        )
    return output, compensation_data


# -- starting ------------------------------------------------------------------------------


def new_execution(
    definition: SagaDefinition,
    input: dict[str, Any],
    idempotency_key: str | None,
    queue: str | None,
) -> SagaExecution:
    """A PENDING execution of `definition`, with one PENDING record per step."""
    created = now()
    return SagaExecution(
        saga_id=new_saga_id(),
        saga_name=definition.name,
        input=dict(input),
        idempotency_key=idempotency_key,
        definition_hash=definition.hash,
        queue=queue,
        created_at=created,
        updated_at=created,
        deadline_at=None if definition.deadline is None else created + definition.deadline,
        steps=[
            StepRecord(
                index=spec.index,
                task_name=spec.task_name,
                stage=spec.stage,
                compensation_task_name=spec.compensation_name,
                no_compensation=spec.no_compensation,
            )
            for spec in definition.steps
        ],
    )


def start(
    saga: Saga,
    input: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    queue: str | None = None,
) -> SagaResult:
    """Create the execution (or find it by idempotency key) and dispatch stage 0."""
    rt = Runtime.of(saga)
    if idempotency_key is not None:
        validate_idempotency_key(idempotency_key)
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue must be a non-empty string, got {queue!r}")
    ensure_json(input, f"the input of saga {saga.name!r}")
    execution = new_execution(rt.definition, input, idempotency_key, queue)
    # Created RUNNING with its first stage started: it is dispatched right below.
    # (PENDING is for an execution created and not yet started; recovery starts those.)
    execution.status = SagaStatus.RUNNING
    for spec in rt.definition.stages[0].steps:
        record = execution.step(spec.index)
        for name, value in _start_changes(execution.saga_id, spec.index).items():
            setattr(record, name, value)
    stored, created = rt.backend.create(execution)
    result = SagaResult(stored.saga_id, rt.backend, saga=saga)
    if not created:
        return result
    log(logging.INFO, execution.saga_id, None, "saga %s started", saga.name)
    signals.saga_started.send(sender=saga.name, saga_id=execution.saga_id, input=input)
    dispatch_stage(rt, execution, 0)
    return result


# -- forward progress -------------------------------------------------------------------------


def _inputs(
    rt: Runtime, execution: SagaExecution, stage_index: int, indexes: Sequence[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Each step's keyword arguments, or why they could not be computed."""
    inputs: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    try:
        ctx = context_before(rt.definition, stage_index, execution)
    except InputResolutionError as exc:
        return {}, {i: str(exc) for i in indexes}
    for index in indexes:
        spec = rt.definition.step(index)
        try:
            kwargs = step_input(spec, ctx, execution)
            ensure_json(kwargs, f"the input of step {spec.index} ({spec.task_name})")
        except (InputResolutionError, StepOutputError) as exc:
            failures[index] = str(exc)
        else:
            inputs[index] = kwargs
    return inputs, failures


def dispatch_stage(rt: Runtime, execution: SagaExecution, stage_index: int) -> None:
    """Compute each step's input from the records and send the stage's messages."""
    stage = rt.definition.stages[stage_index]
    indexes = [spec.index for spec in stage.steps]
    inputs, failures = _inputs(rt, execution, stage_index, indexes)
    if failures:
        # Nothing of this stage is sent: the failing inputs fail their steps, the rest
        # are skipped, and the stage's last member starts the compensation.
        for index in indexes:
            record = execution.step(index)
            attempt = record.attempt if _was_started(record) else record.attempt + 1
            if index in failures:
                _fail_unstartable(rt, execution.saga_id, index, attempt, failures[index])
            else:
                _finish(
                    rt,
                    execution.saga_id,
                    index,
                    attempt,
                    StepStatus.SKIPPED,
                    {"error": "not started: another step of its stage could not start"},
                )
        return
    signatures = []
    for index in indexes:
        record = execution.step(index)
        started = _was_started(record)
        attempt = record.attempt if started else record.attempt + 1
        signatures.append(
            step_signature(
                rt.definition,
                execution,
                rt.definition.step(index),
                attempt,
                inputs[index],
                started=started,
            )
        )
    send(rt.app, signatures, on_eager_error=_eager_error)


def _start_changes(saga_id: str, index: int) -> dict[str, Any]:
    """What marking attempt 1 of a step started writes (before its message is sent)."""
    return {
        "status": StepStatus.RUNNING,
        "attempt": 1,
        "task_id": step_task_id(saga_id, index, 1),
        "started_at": now(),
    }


def _was_started(record: StepRecord) -> bool:
    """True for a first attempt the store marked started when its stage was reached."""
    return (
        record.status is StepStatus.RUNNING and record.attempt == 1 and record.finished_at is None
    )


def _start_next(rt: Runtime, saga_id: str, stage_index: int) -> StartNext | None:
    """The next stage's steps, to mark started in the write that completes this stage."""
    stages = rt.definition.stages
    if stage_index + 1 >= len(stages):
        return None
    nxt = [spec.index for spec in stages[stage_index + 1].steps]
    return StartNext(
        check=tuple(spec.index for spec in stages[stage_index].steps),
        start=tuple(nxt),
        changes={i: _start_changes(saga_id, i) for i in nxt},
    )


def _fail_unstartable(rt: Runtime, saga_id: str, index: int, attempt: int, error: str) -> None:
    """A step whose input could not be computed fails without being sent."""
    _finish(rt, saga_id, index, attempt, StepStatus.FAILED, {"error": error}, failing=True)


def _eager_error(sig: Signature, exc: Exception) -> None:
    """With `task_eager_propagates`, errbacks never run: record the failure here."""
    header = header_of_signature(sig)
    if header is None:
        return
    rt = Runtime.for_header(header, sig.app)
    if header.compensation:
        compensation_failed(rt, header, describe_error(exc))
    else:
        data = exc.compensation_data if isinstance(exc, PermanentFailure) else None
        step_failed(rt, header, describe_error(exc), data, error_types(exc))


def step_started(rt: Runtime, header: SagaHeader, task_id: str | None, retries: int = 0) -> bool:
    """Gate before a step's body runs: True if this attempt may run.

    Refused when the step already finished or a newer attempt owns it. When the
    saga is no longer RUNNING (a sibling failed, it was cancelled, its deadline
    passed) a step that had not started is recorded as skipped; one that had
    started and lost its worker may finish (it is in flight), but never as a retry.
    """
    if header.deadline_passed:
        expire(rt, header.saga_id)
    changes = {
        "status": StepStatus.RUNNING,
        "attempt": header.attempt,
        "task_id": task_id or header.task_id,
        "started_at": now(),
        "retries": retries,
    }
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        changes,
        expect=StepExpect(status=_FORWARD, attempt_at_most=header.attempt, saga_status=_RUNNING),
    )
    if write.applied:
        return True
    if write.status not in _FORWARD or write.attempt > header.attempt:
        log(
            logging.INFO,
            header.saga_id,
            header.index,
            "attempt %s not run: step is %s at attempt %s",
            header.attempt,
            write.status.value,
            write.attempt,
        )
        return False
    if (
        write.status is StepStatus.RUNNING
        and retries == 0
        and write.saga_status in (SagaStatus.COMPENSATING, SagaStatus.PENDING)
    ):
        again = rt.backend.update_step(
            header.saga_id,
            header.index,
            changes,
            expect=StepExpect(
                status=frozenset({StepStatus.RUNNING}), attempt_at_most=header.attempt
            ),
        )
        if again.applied:
            return True
    _finish(
        rt,
        header.saga_id,
        header.index,
        header.attempt,
        StepStatus.SKIPPED,
        {"error": f"not started: saga was {write.saga_status.value}"},
    )
    return False


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
    }
    if started_at is not None:
        changes["started_at"] = started_at
    same_definition = header.definition_hash in ("", rt.definition.hash)
    if inputs is not None and same_definition and _hand_on(rt, header, changes, inputs, output):
        return
    _finish(
        rt,
        header.saga_id,
        header.index,
        header.attempt,
        StepStatus.SUCCESS,
        changes,
        start_next=same_definition,
    )


def _can_hand_on(rt: Runtime, header: SagaHeader) -> bool:
    """Whether the context after this step is its input plus its output (no read needed)."""
    spec = rt.definition.step(header.index)
    stages = rt.definition.stages
    stage = stages[spec.stage]
    if len(stage.steps) != 1 or not isinstance(spec.input, ContextInput) or header.deadline_passed:
        return False
    if spec.stage + 1 < len(stages):
        return not any(isinstance(s.input, TransformInput) for s in stages[spec.stage + 1].steps)
    return rt.definition.output is None or isinstance(rt.definition.output, ContextSource)


def _hand_on(
    rt: Runtime,
    header: SagaHeader,
    changes: dict[str, Any],
    inputs: dict[str, Any],
    output: dict[str, Any],
) -> bool:
    """Finish a single-step stage and start the next from its own input and output.

    One write records the outcome and marks the next stage started; nothing is read
    back. Returns False (having done nothing) when this shortcut does not apply.
    """
    if not _can_hand_on(rt, header):
        return False
    spec = rt.definition.step(header.index)
    last = spec.stage + 1 >= len(rt.definition.stages)
    write, _ = rt.backend.update_step_and_get(
        header.saga_id,
        header.index,
        changes,
        expect=StepExpect(status=_FORWARD, attempt_at_most=header.attempt),
        count_in=f"stage:{spec.stage}",
        get_at=1,
        start_next=None if last else _start_next(rt, header.saga_id, spec.stage),
        read=False,
    )
    if not write.applied:
        return True  # a duplicate: someone else finished this step
    signals.step_succeeded.send(
        sender=rt.definition.name, saga_id=header.saga_id, step=header.index, output=output
    )
    context = {**inputs, **output}
    shell = SagaExecution(
        saga_id=header.saga_id,
        saga_name=header.saga_name,
        queue=header.run_queue,
        deadline_at=header.deadline_at,
        status=SagaStatus.RUNNING,
    )
    if last:
        try:
            context = with_final_transforms(rt.definition, context)
            ensure_json(context, f"the output of saga {header.saga_name!r}")
        except (InputResolutionError, StepOutputError):
            stage_finished(rt, header.saga_id, spec.stage)  # the general path explains it
            return True
        _complete_with(rt, shell, context)
        return True
    nxt = rt.definition.stages[spec.stage + 1]
    if {s.index for s in nxt.steps} != set(write.started):
        stage_finished(rt, header.saga_id, spec.stage)  # the saga stopped: read and decide
        return True
    try:
        context = with_stage_transforms(nxt, context)
        kwargs = {s.index: step_input(s, context, shell) for s in nxt.steps}
        for s in nxt.steps:
            ensure_json(kwargs[s.index], f"the input of step {s.index} ({s.task_name})")
    except (InputResolutionError, StepOutputError) as exc:
        for s in nxt.steps:
            _fail_unstartable(rt, header.saga_id, s.index, 1, str(exc))
        return True
    signatures = [
        step_signature(rt.definition, shell, s, 1, kwargs[s.index], started=True) for s in nxt.steps
    ]
    send(rt.app, signatures, on_eager_error=_eager_error)
    return True


def step_failed(
    rt: Runtime,
    header: SagaHeader,
    error: str,
    compensation_data: Any = None,
    error_names: Sequence[str] = (),
    started_at: float | None = None,
) -> None:
    """Record a step's final failure (or retry it, if its policy says so)."""
    if _retry_step(rt, header, error, error_names):
        return
    changes: dict[str, Any] = {"error": error, "attempt": header.attempt}
    if started_at is not None:
        changes["started_at"] = started_at
    if compensation_data is not None:
        changes["compensation_data"] = compensation_data
    _finish(
        rt, header.saga_id, header.index, header.attempt, StepStatus.FAILED, changes, failing=True
    )


def _retry_step(rt: Runtime, header: SagaHeader, error: str, error_names: Sequence[str]) -> bool:
    """Dispatch the step again as a new attempt when its RetryPolicy allows it."""
    policy = rt.definition.step(header.index).retry
    if policy is None or header.attempt > policy.max_retries or not policy.retries(error_names):
        return False
    attempt = header.attempt + 1
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {"status": StepStatus.PENDING, "attempt": attempt, "error": error},
        expect=StepExpect(status=_FORWARD, attempt=header.attempt, saga_status=_RUNNING),
    )
    if not write.applied:
        return write.status is StepStatus.PENDING and write.attempt == attempt  # already done
    delay = policy.delay(header.attempt)
    log(
        logging.WARNING,
        header.saga_id,
        header.index,
        "attempt %s failed (%s); retrying in %.2fs",
        header.attempt,
        error,
        delay,
    )
    execution = rt.backend.get(header.saga_id)
    if execution is not None:
        _redispatch(rt, execution, [execution.step(header.index)], countdown=delay, bump=False)
    return True


def _finish(
    rt: Runtime,
    saga_id: str,
    index: int,
    attempt: int,
    status: StepStatus,
    changes: dict[str, Any],
    *,
    failing: bool = False,
    start_next: bool = True,
) -> bool:
    """End a step's forward part once; True if this call was the one that did.

    A success that completes its stage also marks the next stage started, in the
    same write, unless `start_next` is false (the message came from a different
    definition, which this worker will not advance).
    """
    spec = rt.definition.step(index)
    stage_size = len(rt.definition.stages[spec.stage].steps)
    write, execution = rt.backend.update_step_and_get(
        saga_id,
        index,
        {**changes, "status": status, "finished_at": changes.get("finished_at") or now()},
        expect=StepExpect(status=_FORWARD, attempt_at_most=attempt),
        count_in=f"stage:{spec.stage}",
        get_at=None if failing else stage_size,
        start_next=(
            _start_next(rt, saga_id, spec.stage)
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
        return False
    log(
        logging.INFO if status is StepStatus.SUCCESS else logging.WARNING,
        saga_id,
        index,
        "step %s %s%s",
        spec.task_name,
        status.value,
        f": {changes.get('error')}" if failing else "",
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
            expect_status=_RUNNING,
        )
    if write.count == stage_size:
        # A failing last member turned the saga to COMPENSATING just above, so it
        # reads the execution after that write; a succeeding one got it with its own.
        stage_finished(rt, saga_id, spec.stage, execution)
    return True


def stage_finished(
    rt: Runtime, saga_id: str, stage_index: int, execution: SagaExecution | None = None
) -> None:
    """Every member of a stage has finished: advance, complete, or compensate."""
    if execution is None:
        execution = rt.backend.get(saga_id)
    if execution is None or not _same_definition(rt, execution):
        return
    stage = rt.definition.stages[stage_index]
    members = [execution.step(spec.index) for spec in stage.steps]
    if (
        execution.status is SagaStatus.RUNNING
        and execution.deadline_at
        and now() > (execution.deadline_at)
    ):
        expire(rt, saga_id)
        _unstart(rt, execution, stage_index + 1)
        execution = rt.backend.get(saga_id) or execution
    if execution.status is SagaStatus.RUNNING and all(
        m.status is StepStatus.SUCCESS for m in members
    ):
        if stage_index + 1 < len(rt.definition.stages):
            dispatch_stage(rt, execution, stage_index + 1)
        else:
            complete(rt, execution)
        return
    begin_compensation(rt, execution, members)


def _unstart(rt: Runtime, execution: SagaExecution, stage_index: int) -> None:
    """Skip a next stage that was marked started but will not be sent after all."""
    if stage_index >= len(rt.definition.stages):
        return
    for spec in rt.definition.stages[stage_index].steps:
        if _was_started(execution.step(spec.index)):
            _finish(
                rt,
                execution.saga_id,
                spec.index,
                1,
                StepStatus.SKIPPED,
                {"error": "not started: the saga stopped before this stage was sent"},
            )


def _same_definition(rt: Runtime, execution: SagaExecution) -> bool:
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
        ensure_json(output, f"the output of saga {execution.saga_name!r}")
    except (InputResolutionError, StepOutputError) as exc:
        if rt.backend.update_saga(
            execution.saga_id,
            {"status": SagaStatus.COMPENSATING, "error": str(exc)},
            expect_status=_RUNNING,
        ):
            compensate_next(rt, execution.saga_id)
        return
    _complete_with(rt, execution, output)


def _complete_with(rt: Runtime, execution: SagaExecution, output: Any) -> None:
    """Mark the saga COMPLETED with `output` (or, if it turned meanwhile, compensate)."""
    if rt.backend.update_saga(
        execution.saga_id,
        {"status": SagaStatus.COMPLETED, "output": output, "finished_at": now()},
        expect_status=_RUNNING,
    ):
        log(logging.INFO, execution.saga_id, None, "saga %s completed", execution.saga_name)
        signals.saga_completed.send(
            sender=execution.saga_name, saga_id=execution.saga_id, output=output
        )
    else:  # cancelled or failed meanwhile
        compensate_next(rt, execution.saga_id)


# -- turning back: failure, deadline, cancellation ------------------------------------------------


def expire(rt: Runtime, saga_id: str) -> bool:
    """The saga's deadline passed: turn it to compensation (once)."""
    deadline = rt.definition.deadline
    turned = rt.backend.update_saga(
        saga_id,
        {
            "status": SagaStatus.COMPENSATING,
            "error": f"deadline exceeded: not completed within {deadline}s",
        },
        expect_status=_RUNNING,
    )
    if turned:
        log(logging.WARNING, saga_id, None, "deadline of %ss exceeded: compensating", deadline)
        compensate_next(rt, saga_id)
    return turned


def cancel(rt: Runtime, saga_id: str, reason: str | None = None) -> bool:
    """Cancel a saga: no new step starts, running steps finish, done steps are compensated.

    Returns False if the saga was not RUNNING or PENDING (already finished or
    compensating). Its final status is CANCELLED (or FAILED if a compensation fails).
    """
    turned = rt.backend.update_saga(
        saga_id,
        {
            "status": SagaStatus.COMPENSATING,
            "cancelled_at": now(),
            "error": f"cancelled{': ' + reason if reason else ''}",
        },
        expect_status={SagaStatus.RUNNING, SagaStatus.PENDING},
    )
    if turned:
        log(logging.WARNING, saga_id, None, "cancelled%s", f": {reason}" if reason else "")
        compensate_next(rt, saga_id)
    return turned


def begin_compensation(rt: Runtime, execution: SagaExecution, members: list[StepRecord]) -> None:
    """Turn the saga to COMPENSATING (if a failure has not already) and start undoing."""
    if execution.status is SagaStatus.RUNNING:
        failed = next((m for m in members if m.status is StepStatus.FAILED), None)
        error = (
            f"step {failed.index} ({failed.task_name}) failed: {failed.error}"
            if failed is not None
            else "a step of the saga did not run"
        )
        rt.backend.update_saga(
            execution.saga_id,
            {
                "status": SagaStatus.COMPENSATING,
                "error": error,
                "failed_step": None if failed is None else failed.index,
            },
            expect_status=_RUNNING,
        )
    compensate_next(rt, execution.saga_id)


def compensate_next(rt: Runtime, saga_id: str) -> None:
    """Dispatch the next compensation in reverse completion order, or finish the saga."""
    execution = rt.backend.get(saga_id)
    if execution is None or execution.status is not SagaStatus.COMPENSATING:
        return
    if any(s.status is StepStatus.COMPENSATING for s in execution.steps):
        return  # one is under way; its outcome calls us again
    # A retry that was waiting to run is dropped: nothing forward retries now.
    for s in execution.steps:
        if s.status is StepStatus.PENDING and s.attempt > 0:
            _finish(
                rt,
                saga_id,
                s.index,
                s.attempt,
                StepStatus.SKIPPED,
                {"error": "retry dropped: the saga is compensating"},
            )
    if any(s.status is StepStatus.RUNNING for s in execution.steps):
        return  # a step in flight finishes first; the last of its stage calls us again
    todo = [s for s in execution.steps if s.needs_compensation]
    if not todo:
        _finalize(rt, execution)
        return
    record = max(todo, key=lambda s: (s.stage, s.seq or 0, s.index))
    attempt = record.comp_attempt + 1
    write = rt.backend.update_step(
        saga_id,
        record.index,
        {"status": StepStatus.COMPENSATING, "comp_attempt": attempt},
        expect=StepExpect(status=frozenset({record.status}), comp_attempt=record.comp_attempt),
    )
    if write.applied:
        _send_compensation(rt, execution, record, attempt, round_start=attempt)


def _send_compensation(
    rt: Runtime,
    execution: SagaExecution,
    record: StepRecord,
    attempt: int,
    countdown: float | None = None,
    round_start: int | None = None,
) -> None:
    sig = compensation_signature(
        rt.definition, execution, record, attempt, countdown, round_start=round_start
    )
    send(rt.app, [sig], on_eager_error=_eager_error)


def _finalize(rt: Runtime, execution: SagaExecution) -> None:
    failed = [s for s in execution.steps if s.status is StepStatus.COMPENSATION_FAILED]
    if failed:
        status = SagaStatus.FAILED
    elif execution.cancelled_at is not None:
        status = SagaStatus.CANCELLED
    else:
        status = SagaStatus.COMPENSATED
    if rt.backend.update_saga(
        execution.saga_id,
        {"status": status, "finished_at": now()},
        expect_status={SagaStatus.COMPENSATING},
    ):
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
        }.get(status, signals.saga_compensated)
        signal.send(sender=execution.saga_name, saga_id=execution.saga_id, error=execution.error)


def compensation_started(rt: Runtime, header: SagaHeader, task_id: str | None) -> bool:
    """Gate before a compensation's body runs: True if this attempt may run."""
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {"comp_task_id": task_id or header.task_id, "comp_started_at": now()},
        expect=StepExpect(status=_COMPENSATING, comp_attempt=header.attempt),
    )
    return write.applied


def compensation_succeeded(rt: Runtime, header: SagaHeader) -> None:
    """Record a compensation as done and dispatch the next one."""
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {"status": StepStatus.COMPENSATED, "comp_finished_at": now(), "comp_error": None},
        expect=StepExpect(status=_COMPENSATING, comp_attempt=header.attempt),
    )
    if write.applied:
        log(logging.INFO, header.saga_id, header.index, "compensated")
        compensate_next(rt, header.saga_id)


def compensation_failed(rt: Runtime, header: SagaHeader, error: str) -> None:
    """Retry a failed compensation with backoff, or record it failed and go on."""
    spec = rt.definition.step(header.index)
    policy = spec.compensation_retry
    max_retries = (
        policy.max_retries
        if policy is not None
        else int(setting(rt.app, "saga_compensation_max_retries"))
    )
    tries = header.attempt - (header.round_start or header.attempt) + 1
    expect = StepExpect(status=_COMPENSATING, comp_attempt=header.attempt)
    if tries <= max_retries:
        write = rt.backend.update_step(
            header.saga_id,
            header.index,
            {"comp_attempt": header.attempt + 1, "comp_error": error},
            expect=expect,
        )
        if write.applied:
            delay = policy.delay(tries) if policy is not None else _backoff(rt.app, tries)
            log(
                logging.WARNING,
                header.saga_id,
                header.index,
                "compensation attempt %s failed (%s); retrying in %.2fs",
                header.attempt,
                error,
                delay,
            )
            execution = rt.backend.get(header.saga_id)
            if execution is not None:
                _send_compensation(
                    rt,
                    execution,
                    execution.step(header.index),
                    header.attempt + 1,
                    delay,
                    round_start=header.round_start,
                )
        return
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {"status": StepStatus.COMPENSATION_FAILED, "comp_error": error, "comp_finished_at": now()},
        expect=expect,
    )
    if write.applied:
        log(
            logging.ERROR,
            header.saga_id,
            header.index,
            "compensation failed for good after %s tries: %s",
            tries,
            error,
        )
        compensate_next(rt, header.saga_id)


def _backoff(app: Celery, retry: int) -> float:
    """Exponential backoff with full jitter, capped (the compensation default)."""
    base = float(setting(app, "saga_compensation_retry_backoff"))
    cap = float(setting(app, "saga_compensation_retry_backoff_max"))
    return random.uniform(0, min(cap, base * 2 ** (retry - 1))) if base > 0 else 0.0


# -- operator actions and recovery ---------------------------------------------------------


def retry_compensations(rt: Runtime, saga_id: str) -> bool:
    """An operator's retry: a FAILED saga's failed compensations run again (fresh budget).

    The failed steps go back to the outcome they had before compensation, the
    saga to COMPENSATING, and compensation resumes in reverse completion order.
    Each retried step's last error stays in its record until it succeeds.
    """
    execution = rt.backend.get(saga_id)
    if execution is None:
        return False
    if execution.status is SagaStatus.FAILED:
        for record in execution.steps:
            if record.status is StepStatus.COMPENSATION_FAILED:
                rt.backend.update_step(
                    saga_id,
                    record.index,
                    {"status": StepStatus.FAILED if record.error else StepStatus.SUCCESS},
                    expect=StepExpect(status=frozenset({StepStatus.COMPENSATION_FAILED})),
                )
        if not rt.backend.update_saga(
            saga_id,
            {"status": SagaStatus.COMPENSATING, "finished_at": None},
            expect_status={SagaStatus.FAILED},
        ):
            return False
        log(logging.WARNING, saga_id, None, "compensation retried by an operator")
        compensate_next(rt, saga_id)
        return True
    if execution.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PENDING):
        return resume(rt, execution).acted
    return False


def resolve_compensation(rt: Runtime, saga_id: str, index: int, note: str) -> bool:
    """An operator undid a step by hand: record it, and finish the saga if nothing is left."""
    execution = rt.backend.get(saga_id)
    if execution is None:
        return False
    record = execution.step(index)
    write = rt.backend.update_step(
        saga_id,
        index,
        {
            "status": StepStatus.COMPENSATED,
            "comp_finished_at": now(),
            "comp_error": f"resolved by hand: {note} (last error: {record.comp_error})",
        },
        expect=StepExpect(status=frozenset({StepStatus.COMPENSATION_FAILED})),
    )
    if not write.applied:
        return False
    log(logging.WARNING, saga_id, index, "compensation resolved by hand: %s", note)
    execution = rt.backend.get(saga_id)
    if (
        execution is not None
        and execution.status is SagaStatus.FAILED
        and not any(s.status is StepStatus.COMPENSATION_FAILED for s in execution.steps)
    ):
        final = SagaStatus.CANCELLED if execution.cancelled_at else SagaStatus.COMPENSATED
        rt.backend.update_saga(saga_id, {"status": final}, expect_status={SagaStatus.FAILED})
    return True


@dataclass(frozen=True)
class Resumed:
    """What `resume` did to one execution."""

    saga_id: str
    action: str
    acted: bool


def _redispatch(
    rt: Runtime,
    execution: SagaExecution,
    records: Sequence[StepRecord],
    countdown: float | None = None,
    *,
    bump: bool = True,
) -> list[int]:
    """Send steps again as new attempts (the store fences the old ones); return the indexes.

    With ``bump=False`` the records already carry their new attempt (a retry).
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
        write = rt.backend.update_step(
            execution.saga_id,
            record.index,
            {"attempt": attempt},
            expect=StepExpect(status=_FORWARD, attempt=record.attempt),
        )
        if write.applied:
            sent.append((record.index, attempt))
    if not sent:
        return []
    inputs, failures = _inputs(rt, execution, stage_index, [i for i, _ in sent])
    signatures = []
    for index, attempt in sent:
        if index in failures:
            _fail_unstartable(rt, execution.saga_id, index, attempt, failures[index])
            continue
        signatures.append(
            step_signature(
                rt.definition,
                execution,
                rt.definition.step(index),
                attempt,
                inputs[index],
                countdown=countdown,
            )
        )
    send(rt.app, signatures, on_eager_error=_eager_error)
    return [i for i, _ in sent]


def resume(rt: Runtime, execution: SagaExecution) -> Resumed:
    """Move a stalled execution on (used by the recovery pass and operators).

    Re-dispatches a lost step as a new attempt, advances a stage whose outcome was
    recorded but not acted on, restarts a stalled compensation. Every action is a
    compare-and-set, so two recoverers at once change nothing twice.
    """
    sid = execution.saga_id
    if not _same_definition(rt, execution):
        return Resumed(sid, "definition mismatch: left alone", False)
    if execution.status is SagaStatus.PENDING:
        if rt.backend.update_saga(
            sid, {"status": SagaStatus.RUNNING}, expect_status={SagaStatus.PENDING}
        ):
            execution.status = SagaStatus.RUNNING
            dispatch_stage(rt, execution, 0)
            return Resumed(sid, "started", True)
        return Resumed(sid, "already started", False)
    if (
        execution.status is SagaStatus.RUNNING
        and execution.deadline_at
        and (now() > execution.deadline_at)
    ):
        expire(rt, sid)
        return Resumed(sid, "deadline exceeded: compensating", True)
    if execution.status is SagaStatus.RUNNING:
        for stage in rt.definition.stages:
            members = [execution.step(spec.index) for spec in stage.steps]
            if all(m.status is StepStatus.SUCCESS for m in members):
                continue
            lost = [m for m in members if m.status in _FORWARD]
            if lost:
                sent = _redispatch(rt, execution, lost)
                return Resumed(sid, f"re-dispatched steps {sent}", bool(sent))
            stage_finished(rt, sid, stage.index, execution)
            return Resumed(sid, f"acted on the outcome of stage {stage.index}", True)
        complete(rt, execution)
        return Resumed(sid, "completed", True)
    if execution.status is SagaStatus.COMPENSATING:
        stalled = [s for s in execution.steps if s.status is StepStatus.COMPENSATING]
        if stalled:
            record = stalled[0]
            attempt = record.comp_attempt + 1
            write = rt.backend.update_step(
                sid,
                record.index,
                {"comp_attempt": attempt},
                expect=StepExpect(status=_COMPENSATING, comp_attempt=record.comp_attempt),
            )
            if write.applied:
                _send_compensation(rt, execution, record, attempt, round_start=attempt)
                return Resumed(sid, f"re-dispatched the compensation of step {record.index}", True)
            return Resumed(sid, "compensation moved meanwhile", False)
        in_flight = [s for s in execution.steps if s.status is StepStatus.RUNNING]
        dispatched = _current_stage_pending(rt, execution)
        if in_flight or dispatched:
            by_stage = in_flight or dispatched
            first = by_stage[0].stage
            sent = _redispatch(rt, execution, [s for s in by_stage if s.stage == first])
            return Resumed(sid, f"re-dispatched in-flight steps {sent}", bool(sent))
        compensate_next(rt, sid)
        return Resumed(sid, "compensation resumed", True)
    return Resumed(sid, f"nothing to do: {execution.status.value}", False)


def _current_stage_pending(rt: Runtime, execution: SagaExecution) -> list[StepRecord]:
    """PENDING steps of the first unfinished stage that was dispatched (its count started)."""
    for stage in rt.definition.stages:
        members = [execution.step(spec.index) for spec in stage.steps]
        pending = [m for m in members if m.status is StepStatus.PENDING]
        if not pending:
            continue
        if len(pending) < len(members):
            return pending  # some members moved: the stage was dispatched
        return []
    return []


def record_unregistered(
    app: Celery,
    header: SagaHeader,
    *,
    succeeded: bool,
    output: Any = None,
    compensation_data: Any = None,
    error: str | None = None,
) -> bool:
    """Store an outcome that reached a process without the saga's definition.

    Nothing is lost: the step's outcome is recorded (its stage is read from the
    record), the saga's error says what happened, and the recovery pass, run where
    the saga is defined, moves it on.
    """
    backend = backend_for(app)
    execution = backend.get(header.saga_id)
    if execution is None:
        return False
    record = execution.step(header.index)
    if header.compensation:
        changes: dict[str, Any] = {
            "status": StepStatus.COMPENSATED if succeeded else StepStatus.COMPENSATION_FAILED,
            "comp_finished_at": now(),
            "comp_error": error,
        }
        write = backend.update_step(
            header.saga_id,
            header.index,
            changes,
            expect=StepExpect(status=_COMPENSATING, comp_attempt=header.attempt),
        )
    else:
        changes = {
            "status": StepStatus.SUCCESS if succeeded else StepStatus.FAILED,
            "finished_at": now(),
            "attempt": header.attempt,
            "error": error,
        }
        if succeeded:
            changes.update(output=output, compensation_data=compensation_data)
        elif compensation_data is not None:
            changes["compensation_data"] = compensation_data
        write = backend.update_step(
            header.saga_id,
            header.index,
            changes,
            expect=StepExpect(status=_FORWARD, attempt_at_most=header.attempt),
            count_in=f"stage:{record.stage}",
        )
    if write.applied:
        note = (
            f"saga {header.saga_name!r} is not registered in the process that received the "
            f"outcome of step {header.index}: the outcome is recorded; run `celery saga "
            "recover` (or the recovery task) where the saga is defined to move it on"
        )
        log(logging.ERROR, header.saga_id, header.index, "%s", note)
        backend.update_saga(header.saga_id, {"error": note})
    return write.applied
