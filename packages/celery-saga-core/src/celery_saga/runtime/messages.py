"""The messages a saga sends: step and compensation signatures, their inputs, the send.

Builds what goes on the broker and sends it; writes nothing to the store. In eager
mode with `task_eager_propagates`, a failing step's exception reaches the sender
instead of an errback: the handlers that record such failures register here (the
step and compensation handlers, which sit above this module).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from celery_saga import tracing
from celery_saga.backends.base import StartNext
from celery_saga.compiler import (
    compensation_signature,
    header_of_signature,
    queue_of,
    step_signature,
)
from celery_saga.context import InputResolutionError, context_before, step_input
from celery_saga.errors import StepOutputError
from celery_saga.ids import step_task_id
from celery_saga.models import SagaExecution, StepRecord, StepStatus, now
from celery_saga.response import ensure_json
from celery_saga.runtime import dispatch
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.decide import was_started

if TYPE_CHECKING:
    from celery import Signature

    from celery_saga.headers import SagaHeader

#: (runtime, header, exception) -> None; one for steps, one for compensations.
FailureHandler = Callable[[Runtime, "SagaHeader", Exception], None]
_on_eager_failure: dict[bool, FailureHandler] = {}


def on_eager_failure(*, compensation: bool, handler: FailureHandler) -> None:
    """Register who records an eagerly propagated failure of a step or compensation."""
    _on_eager_failure[compensation] = handler


def _eager_error(sig: Signature, exc: Exception) -> None:
    """With `task_eager_propagates`, errbacks never run: record the failure here."""
    header = header_of_signature(sig)
    if header is None:
        return
    _on_eager_failure[header.compensation](Runtime.for_header(header, sig.app), header, exc)


def send(rt: Runtime, signatures: Sequence[Signature]) -> None:
    """Publish `signatures` on the saga's app (eagerly: run them after the current one).

    When tracing is on, the current trace context goes into each message's headers.
    """
    hooks = tracing.hooks
    if hooks is not None:
        for sig in signatures:
            hooks.inject(sig.options["headers"])
    dispatch.send(rt.app, signatures, on_eager_error=_eager_error)


def start_changes(saga_id: str, index: int) -> dict[str, Any]:
    """What marking attempt 1 of a step started writes (before its message is sent)."""
    return {
        "status": StepStatus.RUNNING,
        "attempt": 1,
        "task_id": step_task_id(saga_id, index, 1),
        "started_at": now(),
    }


def start_next(rt: Runtime, saga_id: str, stage_index: int) -> StartNext | None:
    """The next stage's steps, to mark started in the write that completes this stage."""
    stages = rt.definition.stages
    if stage_index + 1 >= len(stages):
        return None
    nxt = [spec.index for spec in stages[stage_index + 1].steps]
    return StartNext(
        check=tuple(spec.index for spec in stages[stage_index].steps),
        start=tuple(nxt),
        changes={i: start_changes(saga_id, i) for i in nxt},
    )


def inputs(
    rt: Runtime,
    execution: SagaExecution,
    stage_index: int,
    indexes: Sequence[int],
    ctx: dict[str, Any] | None = None,
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Each step's keyword arguments, or why they could not be computed.

    `ctx` is the context before the stage, when the caller derived it already.
    """
    found: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    if ctx is None:
        try:
            ctx = context_before(rt.definition, stage_index, execution)
        except InputResolutionError as exc:
            return {}, {i: str(exc) for i in indexes}
    for index in indexes:
        spec = rt.definition.step(index)
        try:
            kwargs = step_input(spec, ctx, execution)
            ensure_json(kwargs, f"the input of step {spec.index} ({spec.task_name})", "step input")
        except (InputResolutionError, StepOutputError) as exc:
            failures[index] = str(exc)
        else:
            found[index] = kwargs
    return found, failures


def conditions(
    rt: Runtime, execution: SagaExecution, stage_index: int
) -> tuple[set[int], dict[int, str], dict[str, Any] | None]:
    """The stage's steps whose condition (`when`) is false, the conditions that raised,
    and the context they were given (None when the stage has no condition).

    Each predicate is called with the context before the stage, derived from the
    records, in the process that starts the stage.
    """
    specs = [s for s in rt.definition.stages[stage_index].steps if s.when is not None]
    if not specs:
        return set(), {}, None
    try:
        ctx = context_before(rt.definition, stage_index, execution)
    except InputResolutionError as exc:
        return set(), {s.index: str(exc) for s in specs}, None
    skipped: set[int] = set()
    failures: dict[int, str] = {}
    for spec in specs:
        assert spec.when is not None
        try:
            holds = spec.when(dict(ctx))
        except Exception as exc:
            name = getattr(spec.when, "__qualname__", repr(spec.when))
            failures[spec.index] = (
                f"the condition {name!r} of step {spec.index} ({spec.task_name}) raised "
                f"{type(exc).__name__}: {exc}"
            )
        else:
            if not holds:
                skipped.add(spec.index)
    return skipped, failures, ctx


def next_attempt(record: StepRecord) -> int:
    """The attempt a stage's dispatch sends: the one marked started, or the next."""
    return record.attempt if was_started(record) else record.attempt + 1


def send_steps(
    rt: Runtime,
    execution: SagaExecution,
    attempts: Sequence[tuple[int, int]],
    kwargs: dict[int, dict[str, Any]],
    *,
    started: Collection[int] = (),
    countdown: float | None = None,
) -> None:
    """Send each (step, attempt) of `attempts` with its keyword arguments.

    `started`: steps the store already marked started (their messages need no gate).
    """
    signatures = [
        step_signature(
            rt.definition,
            execution,
            rt.definition.step(index),
            attempt,
            kwargs[index],
            started=index in started,
            countdown=countdown,
        )
        for index, attempt in attempts
    ]
    send(rt, signatures)


def send_compensation(
    rt: Runtime,
    execution: SagaExecution,
    record: StepRecord,
    attempt: int,
    countdown: float | None = None,
    round_start: int | None = None,
) -> None:
    """Send attempt `attempt` of `record`'s compensation."""
    sig = compensation_signature(
        rt.definition, execution, record, attempt, countdown, round_start=round_start
    )
    send(rt, [sig])


def send_late_compensation(
    rt: Runtime,
    execution: SagaExecution,
    index: int,
    late: int,
    attempt: int,
    countdown: float | None = None,
    round_start: int | None = None,
) -> None:
    """Send attempt `attempt` of the compensation that undoes superseded attempt `late`."""
    record = execution.step(index)
    entry = (record.late or {}).get(str(late)) or {}
    sig = compensation_signature(
        rt.definition,
        execution,
        record,
        attempt,
        countdown,
        round_start=attempt if round_start is None else round_start,
        late=late,
        compensation_data=entry.get("compensation_data"),
    )
    send(rt, [sig])


def step_queue(
    rt: Runtime, execution: SagaExecution, index: int, *, compensation: bool = False
) -> str:
    """The queue a step's (or compensation's) messages go to."""
    return queue_of(rt.definition, execution, index, compensation=compensation)
