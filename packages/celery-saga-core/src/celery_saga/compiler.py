"""The chain compiler: turn a step (or its compensation) into a Celery signature.

Each signature carries the saga header and a task id naming the saga, step and
attempt, and is sent as JSON whatever the app's `task_serializer` (nothing a saga
reads from the broker is unpickled). A step given as a task object reports its
own outcome in its worker; a step given by name gets a reply callback (`link`)
and reply errback (`link_error`) to the saga's queue. Failures a worker reports
from outside the task (a hard time limit) are caught by a `task_failure`
receiver, from the task id.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from celery import Signature

from celery_saga.config import setting
from celery_saga.headers import HEADER, SagaHeader

if TYPE_CHECKING:
    from celery import Celery, Task

    from celery_saga.definition import SagaDefinition, StepSpec
    from celery_saga.models import SagaExecution, StepRecord

REPLY_SUCCESS = "celery_saga.reply_success"
REPLY_FAILURE = "celery_saga.reply_failure"
#: The serializer of every message a saga sends (Celery's `serializer` option).
SERIALIZER = "json"


@functools.lru_cache(maxsize=1024)
def _routed_queue(app: Celery, name: str) -> str | None:
    """The queue Celery's router picks for `name`, or None for the default queue."""
    try:
        route = app.amqp.router.route({}, name, (), {})
    except Exception:  # a router that needs arguments: treat as routed elsewhere
        return None
    queue = route.get("queue")
    queue_name = getattr(queue, "name", queue)
    default: str = app.conf.task_default_queue
    return None if queue_name in (None, default) else str(queue_name)


@functools.lru_cache(maxsize=1024)
def reply_queue(app: Celery, execution_queue: str | None) -> str:
    """Where the saga's own messages go: run(queue=), `saga_queue`, their route, or default."""
    configured = execution_queue or setting(app, "saga_queue")
    if configured:
        return str(configured)
    return _routed_queue(app, REPLY_SUCCESS) or str(app.conf.task_default_queue)


def _has_own_route(app: Celery, name: str, task: Task | None) -> bool:
    if task is not None and getattr(task, "queue", None):
        return True
    return _routed_queue(app, name) is not None


def _replies(app: Celery, header: SagaHeader, queue: str, by_name: bool) -> dict[str, Any]:
    """Reply callbacks for a step named by task name (its worker may not know the saga).

    A step given as a task object reports from its own worker; what its worker
    reports from outside the task (a hard time limit) reaches the `task_failure`
    receiver of `celery_saga.runtime.replies`, which reads the task id.
    """
    if not by_name:
        return {}
    meta = {"saga": header.to_dict()}
    options = {"queue": queue, "serializer": SERIALIZER}
    return {
        "link": [Signature(REPLY_SUCCESS, kwargs=meta, options=options, app=app)],
        "link_error": [Signature(REPLY_FAILURE, kwargs=meta, options=dict(options), app=app)],
    }


def step_signature(
    definition: SagaDefinition,
    execution: SagaExecution,
    spec: StepSpec,
    attempt: int,
    kwargs: dict[str, Any],
    countdown: float | None = None,
    *,
    started: bool = False,
) -> Signature:
    """The message that runs attempt `attempt` of step `spec` with `kwargs`.

    `started` says the store already marked this attempt RUNNING (in the write
    that completed the previous stage), so the step needs no gate of its own.
    """
    app = definition.app
    queue = reply_queue(app, execution.queue)
    header = SagaHeader(
        saga_id=execution.saga_id,
        saga_name=definition.name,
        index=spec.index,
        attempt=attempt,
        definition_hash=definition.hash,
        queue=queue,
        deadline_at=execution.deadline_at,
        started=started,
        run_queue=execution.queue,
        child=execution.parent_id is not None,
        trace=execution.trace_context,
    )
    options: dict[str, Any] = dict(spec.options)
    if (
        execution.queue
        and "queue" not in options
        and not _has_own_route(app, spec.task_name, spec.task)
    ):
        options["queue"] = execution.queue
    if countdown:
        options["countdown"] = countdown
    options["task_id"] = header.task_id
    options["headers"] = {HEADER: header.to_dict()}
    options["serializer"] = SERIALIZER
    options.update(_replies(app, header, queue, by_name=spec.by_name))
    return Signature(spec.task or spec.task_name, (), kwargs, options, app=app)


def compensation_signature(
    definition: SagaDefinition,
    execution: SagaExecution,
    record: StepRecord,
    attempt: int,
    countdown: float | None = None,
    round_start: int | None = None,
    *,
    late: int | None = None,
    compensation_data: Any = None,
) -> Signature:
    """The message that runs attempt `attempt` of the compensation of `record`.

    `round_start` is the attempt that began this round of tries: the retry budget
    counts from it, so an operator's retry gets a fresh budget. With `late`, it
    undoes the late success of that superseded attempt, with `compensation_data`.
    """
    app = definition.app
    spec = definition.step(record.index)
    queue = reply_queue(app, execution.queue)
    header = SagaHeader(
        saga_id=execution.saga_id,
        saga_name=definition.name,
        index=record.index,
        attempt=attempt,
        compensation=True,
        definition_hash=definition.hash,
        queue=queue,
        round_start=attempt if round_start is None else round_start,
        late=late,
        trace=execution.trace_context,
        # Said only for traced sagas: their attempts link back when reverted.
        revert=execution.trace_context is not None and execution.revert_reason is not None,
    )
    name = record.compensation_task_name or ""
    options: dict[str, Any] = {}
    if execution.queue and not _has_own_route(app, name, spec.compensation):
        options["queue"] = execution.queue
    if countdown:
        options["countdown"] = countdown
    options["task_id"] = header.task_id
    options["headers"] = {HEADER: header.to_dict()}
    options["serializer"] = SERIALIZER
    options.update(_replies(app, header, queue, by_name=spec.compensation is None))
    data = record.compensation_data if late is None else compensation_data
    return Signature(spec.compensation or name, (data,), {}, options, app=app)


def queue_of(
    definition: SagaDefinition,
    execution: SagaExecution,
    index: int,
    *,
    compensation: bool = False,
) -> str:
    """The queue a step's (or its compensation's) message goes to, for error messages."""
    app = definition.app
    spec = definition.step(index)
    task = spec.compensation if compensation else spec.task
    name = (spec.compensation_name if compensation else spec.task_name) or ""
    explicit = None if compensation else spec.options.get("queue")
    explicit = explicit or getattr(task, "queue", None)
    if explicit:
        return str(getattr(explicit, "name", explicit))
    if execution.queue and not _has_own_route(app, name, task):
        return execution.queue
    return _routed_queue(app, name) or str(app.conf.task_default_queue)


def header_of_signature(sig: Signature) -> SagaHeader | None:
    """The saga header a compiled signature carries."""
    headers = sig.options.get("headers") or {}
    return SagaHeader.from_dict(headers.get(HEADER))
