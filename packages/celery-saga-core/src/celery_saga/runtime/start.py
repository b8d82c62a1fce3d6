"""Starting an execution: create its record (or find it by idempotency key), send stage 0."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery_saga import signals, tracing
from celery_saga.ids import new_saga_id, validate_idempotency_key
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, now
from celery_saga.response import ensure_json
from celery_saga.runtime import driver, messages
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.log import log

if TYPE_CHECKING:
    from celery_saga.definition import SagaDefinition
    from celery_saga.registry import Saga


def new_execution(
    definition: SagaDefinition,
    input: dict[str, Any],
    idempotency_key: str | None,
    queue: str | None,
    *,
    saga_id: str | None = None,
    parent: tuple[str, int] | None = None,
) -> SagaExecution:
    """A PENDING execution of `definition`, with one PENDING record per step.

    `parent` is (execution id, step index) for a child saga.
    """
    created = now()
    return SagaExecution(
        saga_id=saga_id or new_saga_id(),
        parent_id=None if parent is None else parent[0],
        parent_step=None if parent is None else parent[1],
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
                kind=spec.kind,
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
) -> str:
    """Create the execution (or find it by idempotency key), dispatch stage 0; its id.

    If the first stage cannot be sent (the broker is down), the execution goes back
    to PENDING and the error is raised: calling `run()` again with the same
    idempotency key (or the recovery pass) sends it then.
    """
    return start_runtime(Runtime.of(saga), input, idempotency_key=idempotency_key, queue=queue)


def start_runtime(
    rt: Runtime,
    input: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    queue: str | None = None,
    saga_id: str | None = None,
    parent: tuple[str, int] | None = None,
) -> str:
    """`start` for a runtime; a child saga gives its own id and its parent's link."""
    saga = rt.saga
    if idempotency_key is not None:
        validate_idempotency_key(idempotency_key)
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue must be a non-empty string, got {queue!r}")
    ensure_json(input, f"the input of saga {saga.name!r}", "saga input")
    execution = new_execution(
        rt.definition, input, idempotency_key, queue, saga_id=saga_id, parent=parent
    )
    # Created RUNNING with its first stage started: it is dispatched right below.
    for spec in rt.definition.stages[0].steps:
        record = execution.step(spec.index)
        for name, value in messages.start_changes(execution.saga_id, spec.index).items():
            setattr(record, name, value)
    execution.status = SagaStatus.RUNNING
    hooks = tracing.hooks
    if hooks is None:
        return _create(rt, execution, input, saga.name).saga_id
    run = tracing.SagaRun(saga.name, execution.saga_id, parent_id=execution.parent_id)
    with hooks.saga_created(run) as carrier:
        execution.trace_context = carrier
        stored = _create(rt, execution, input, saga.name)
        if stored is not execution:
            run.existing_id = stored.saga_id
        return stored.saga_id


def _create(
    rt: Runtime, execution: SagaExecution, input: dict[str, Any], name: str
) -> SagaExecution:
    """Store `execution` and send its first stage; the execution found instead, if any."""
    stored, created = rt.backend.create(execution)
    if not created:
        if stored.status is SagaStatus.PENDING:  # an earlier run() could not send it
            send_first(rt, stored)
        return stored
    log(logging.INFO, execution.saga_id, None, "saga %s started", name)
    signals.saga_started.send(sender=name, saga_id=execution.saga_id, input=input)
    send_first(rt, execution)
    return execution


def send_first(rt: Runtime, execution: SagaExecution) -> None:
    """Send stage 0; if that fails, leave the execution PENDING for a retry, and raise."""
    sid = execution.saga_id
    if execution.status is SagaStatus.PENDING:
        if not rt.backend.update_saga(
            sid, {"status": SagaStatus.RUNNING}, expect_status={SagaStatus.PENDING}
        ):
            return  # another caller (or recovery) started it
        execution.status = SagaStatus.RUNNING
    try:
        driver.dispatch_stage(rt, execution, 0)
    except Exception:
        try:
            rt.backend.update_saga(
                sid, {"status": SagaStatus.PENDING}, expect_status={SagaStatus.RUNNING}
            )
        except Exception as exc:  # the store is away too: recovery re-sends it later
            log(logging.ERROR, sid, None, "could not mark the unsent saga PENDING: %r", exc)
        else:
            log(logging.WARNING, sid, None, "first stage not sent: left PENDING for a retry")
        raise
