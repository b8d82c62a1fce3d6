"""The saga state machine: every transition is a compare-and-set in the store.

Called from the step's own worker (task objects), from reply tasks (steps named by
task name), and from `Saga.run()`. Because each transition is a conditional write,
a redelivered or duplicated message changes nothing twice: a step finishes once,
a stage advances once (the store's counter names its last member), and each
compensation runs once per step that needs it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery_saga import registry
from celery_saga.backends.base import SagaBackend, StepExpect
from celery_saga.compiler import compensation_signature, header_of_signature, step_signature
from celery_saga.config import backend_for, setting
from celery_saga.context import InputResolutionError, context_before, saga_output, step_input
from celery_saga.errors import PermanentFailure, SagaDefinitionMismatch, StepOutputError
from celery_saga.ids import new_saga_id, validate_idempotency_key
from celery_saga.models import (
    SagaExecution,
    SagaStatus,
    StepRecord,
    StepStatus,
    now,
)
from celery_saga.response import ensure_json
from celery_saga.result import SagaResult
from celery_saga.runtime.dispatch import send
from celery_saga.runtime.log import log

if TYPE_CHECKING:
    from celery import Celery, Signature

    from celery_saga.builder import Saga
    from celery_saga.definition import SagaDefinition
    from celery_saga.headers import SagaHeader

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})
_RUNNING = frozenset({SagaStatus.RUNNING})
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
        """The runtime of a saga object."""
        definition = saga.definition
        return cls(saga, definition, backend_for(definition.app, saga.backend))

    @classmethod
    def for_header(cls, header: SagaHeader, app: Celery | None = None) -> Runtime:
        """The runtime of the saga a message belongs to (SagaNotRegistered if unknown here)."""
        return cls.of(registry.lookup(header.saga_name, app))


def describe_error(exc: BaseException) -> str:
    """A one-line description of an exception for the store."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


# -- starting ------------------------------------------------------------------------------


def new_execution(
    definition: SagaDefinition,
    input: dict[str, Any],
    idempotency_key: str | None,
    queue: str | None,
) -> SagaExecution:
    """A PENDING execution of `definition`, with one PENDING record per step."""
    return SagaExecution(
        saga_id=new_saga_id(),
        saga_name=definition.name,
        input=dict(input),
        idempotency_key=idempotency_key,
        definition_hash=definition.hash,
        queue=queue,
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
    # Created RUNNING: its first stage is dispatched right below. (PENDING is for an
    # execution created and not yet started; the recovery pass starts those.)
    execution.status = SagaStatus.RUNNING
    stored, created = rt.backend.create(execution)
    result = SagaResult(stored.saga_id, rt.backend, saga=saga)
    if not created:
        return result
    log(logging.INFO, execution.saga_id, None, "saga %s started", saga.name)
    from celery_saga import signals

    signals.saga_started.send(sender=saga.name, saga_id=execution.saga_id, input=input)
    dispatch_stage(rt, execution, 0)
    return result


# -- forward progress -------------------------------------------------------------------------


def dispatch_stage(rt: Runtime, execution: SagaExecution, stage_index: int) -> None:
    """Compute each step's input from the records and send the stage's messages."""
    stage = rt.definition.stages[stage_index]
    signatures: list[Signature] = []
    failures: dict[int, str] = {}
    try:
        ctx = context_before(rt.definition, stage_index, execution)
    except InputResolutionError as exc:
        failures = {spec.index: str(exc) for spec in stage.steps}
    else:
        for spec in stage.steps:
            try:
                kwargs = step_input(spec, ctx, execution)
                ensure_json(kwargs, f"the input of step {spec.index} ({spec.task_name})")
            except (InputResolutionError, StepOutputError) as exc:
                failures[spec.index] = str(exc)
                continue
            attempt = execution.step(spec.index).attempt + 1
            signatures.append(step_signature(rt.definition, execution, spec, attempt, kwargs))
    if failures:
        # Nothing of this stage is sent: the failing inputs fail their steps, the rest
        # are skipped, and the stage's last member starts the compensation.
        for spec in stage.steps:
            attempt = execution.step(spec.index).attempt + 1
            if spec.index in failures:
                _finish(
                    rt,
                    execution.saga_id,
                    spec.index,
                    attempt,
                    StepStatus.FAILED,
                    {"error": failures[spec.index]},
                    failing=True,
                )
            else:
                _finish(
                    rt,
                    execution.saga_id,
                    spec.index,
                    attempt,
                    StepStatus.SKIPPED,
                    {"error": "not started: another step of its stage could not start"},
                )
        return
    send(rt.app, signatures, on_eager_error=_eager_error)


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
        step_failed(rt, header, describe_error(exc), data)


def step_started(rt: Runtime, header: SagaHeader, task_id: str | None, retries: int = 0) -> bool:
    """Gate before a step's body runs: True if this attempt may run.

    Refused when the step already finished, when a newer attempt owns it, or when
    the saga is no longer RUNNING (then the step is recorded as skipped).
    """
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {
            "status": StepStatus.RUNNING,
            "attempt": header.attempt,
            "task_id": task_id or header.task_id,
            "started_at": now(),
            "retries": retries,
        },
        expect=StepExpect(status=_FORWARD, attempt_at_most=header.attempt, saga_status=_RUNNING),
    )
    if write.applied:
        return True
    if write.status in _FORWARD and write.attempt <= header.attempt:
        _finish(
            rt,
            header.saga_id,
            header.index,
            header.attempt,
            StepStatus.SKIPPED,
            {"error": f"not started: saga was {write.saga_status.value}"},
        )
    else:
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


def step_succeeded(
    rt: Runtime, header: SagaHeader, output: dict[str, Any], compensation_data: Any
) -> None:
    """Record a step's output; the stage's last member moves the saga on."""
    changes = {
        "status": StepStatus.SUCCESS,
        "output": output,
        "compensation_data": compensation_data,
        "finished_at": now(),
        "error": None,
        "attempt": header.attempt,
    }
    if _finish(rt, header.saga_id, header.index, header.attempt, StepStatus.SUCCESS, changes):
        from celery_saga import signals

        signals.step_succeeded.send(
            sender=rt.definition.name, saga_id=header.saga_id, step=header.index, output=output
        )


def step_failed(rt: Runtime, header: SagaHeader, error: str, compensation_data: Any = None) -> None:
    """Record a step's final failure; the saga turns to compensation."""
    changes: dict[str, Any] = {"error": error, "attempt": header.attempt}
    if compensation_data is not None:
        changes["compensation_data"] = compensation_data
    if _finish(
        rt, header.saga_id, header.index, header.attempt, StepStatus.FAILED, changes, failing=True
    ):
        from celery_saga import signals

        signals.step_failed.send(
            sender=rt.definition.name, saga_id=header.saga_id, step=header.index, error=error
        )


def _finish(
    rt: Runtime,
    saga_id: str,
    index: int,
    attempt: int,
    status: StepStatus,
    changes: dict[str, Any],
    *,
    failing: bool = False,
) -> bool:
    """End a step's forward part once; True if this call was the one that did."""
    spec = rt.definition.step(index)
    stage_size = len(rt.definition.stages[spec.stage].steps)
    write, execution = rt.backend.update_step_and_get(
        saga_id,
        index,
        {**changes, "status": status, "finished_at": changes.get("finished_at") or now()},
        expect=StepExpect(status=_FORWARD, attempt_at_most=attempt),
        count_in=f"stage:{spec.stage}",
        get_at=None if failing else stage_size,
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
    if execution is None:
        return
    if execution.definition_hash != rt.definition.hash:
        error = SagaDefinitionMismatch(
            f"saga {execution.saga_name} {saga_id} was started by definition "
            f"{execution.definition_hash} but this worker has {rt.definition.hash}: it will not "
            "guess how to go on. Run a worker with the original definition (or finish "
            "old executions before deploying a changed saga)."
        )
        log(logging.ERROR, saga_id, None, "%s", error)
        rt.backend.update_saga(saga_id, {"error": str(error)})
        return
    stage = rt.definition.stages[stage_index]
    members = [execution.step(spec.index) for spec in stage.steps]
    if execution.status is SagaStatus.RUNNING and all(
        m.status is StepStatus.SUCCESS for m in members
    ):
        if stage_index + 1 < len(rt.definition.stages):
            dispatch_stage(rt, execution, stage_index + 1)
        else:
            complete(rt, execution)
        return
    begin_compensation(rt, execution, members)


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
    if rt.backend.update_saga(
        execution.saga_id,
        {"status": SagaStatus.COMPLETED, "output": output, "finished_at": now()},
        expect_status=_RUNNING,
    ):
        log(logging.INFO, execution.saga_id, None, "saga %s completed", execution.saga_name)
        from celery_saga import signals

        signals.saga_completed.send(
            sender=execution.saga_name, saga_id=execution.saga_id, output=output
        )
    else:  # cancelled or failed meanwhile
        compensate_next(rt, execution.saga_id)


# -- compensation ---------------------------------------------------------------------------------


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
    if any(s.status in _FORWARD and s.attempt > 0 for s in execution.steps):
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
        {"status": StepStatus.COMPENSATING, "comp_attempt": attempt, "comp_error": None},
        expect=StepExpect(status=frozenset({record.status}), comp_attempt=record.comp_attempt),
    )
    if write.applied:
        _send_compensation(rt, execution, record, attempt)


def _send_compensation(
    rt: Runtime,
    execution: SagaExecution,
    record: StepRecord,
    attempt: int,
    countdown: float | None = None,
) -> None:
    sig = compensation_signature(rt.definition, execution, record, attempt, countdown)
    send(rt.app, [sig], on_eager_error=_eager_error)


def _finalize(rt: Runtime, execution: SagaExecution) -> None:
    failed = [s for s in execution.steps if s.status is StepStatus.COMPENSATION_FAILED]
    status = SagaStatus.FAILED if failed else SagaStatus.COMPENSATED
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
        from celery_saga import signals

        signal = signals.saga_failed if failed else signals.saga_compensated
        signal.send(sender=execution.saga_name, saga_id=execution.saga_id, error=execution.error)


def compensation_started(rt: Runtime, header: SagaHeader, task_id: str | None) -> bool:
    """Gate before a compensation's body runs: True if this attempt may run."""
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {"comp_task_id": task_id or header.task_id, "comp_started_at": now()},
        expect=StepExpect(status=frozenset({StepStatus.COMPENSATING}), comp_attempt=header.attempt),
    )
    return write.applied


def compensation_succeeded(rt: Runtime, header: SagaHeader) -> None:
    """Record a compensation as done and dispatch the next one."""
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {"status": StepStatus.COMPENSATED, "comp_finished_at": now(), "comp_error": None},
        expect=StepExpect(status=frozenset({StepStatus.COMPENSATING}), comp_attempt=header.attempt),
    )
    if write.applied:
        log(logging.INFO, header.saga_id, header.index, "compensated")
        compensate_next(rt, header.saga_id)


def compensation_failed(rt: Runtime, header: SagaHeader, error: str) -> None:
    """Retry a failed compensation with backoff, or record it failed and go on."""
    retries = int(setting(rt.app, "saga_compensation_max_retries"))
    expect = StepExpect(status=frozenset({StepStatus.COMPENSATING}), comp_attempt=header.attempt)
    if header.attempt <= retries:
        write = rt.backend.update_step(
            header.saga_id,
            header.index,
            {"comp_attempt": header.attempt + 1, "comp_error": error},
            expect=expect,
        )
        if write.applied:
            log(
                logging.WARNING,
                header.saga_id,
                header.index,
                "compensation attempt %s failed (%s); retrying",
                header.attempt,
                error,
            )
            execution = rt.backend.get(header.saga_id)
            if execution is not None:
                _send_compensation(
                    rt,
                    execution,
                    execution.step(header.index),
                    header.attempt + 1,
                    _backoff(rt.app, header.attempt),
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
            "compensation failed for good after %s attempts: %s",
            header.attempt,
            error,
        )
        compensate_next(rt, header.saga_id)


def _backoff(app: Celery, attempt: int) -> float:
    """Exponential backoff with full jitter, capped."""
    base = float(setting(app, "saga_compensation_retry_backoff"))
    cap = float(setting(app, "saga_compensation_retry_backoff_max"))
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1))) if base > 0 else 0.0
