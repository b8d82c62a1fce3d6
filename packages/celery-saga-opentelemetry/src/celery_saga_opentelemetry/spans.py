"""Where an attempt's span goes in the trace: its parent, its links, its attributes.

An attempt of the saga's own flow (the first try of a step or a compensation) is a
child of the saga's span, so a saga's trace is one tree: the saga, then each step and
compensation under it. An attempt that was sent again (a retry, a recovery's re-send, a
redelivery, a compensation of a reverted saga) is a child of what sent it (the context
in its message headers: the failed attempt, the recovery pass, the operator's request;
a new trace when the sender traced nothing) and links back to the saga's span.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Tracer
from opentelemetry.util.types import Attributes

from celery_saga.tracing import STEP, Attempt
from celery_saga_opentelemetry import attributes as attr
from celery_saga_opentelemetry.propagation import extract_request, span_context_of


def span_name(attempt: Attempt) -> str:
    """``saga.step <task>`` or ``saga.compensate <task>``."""
    template = attr.STEP_SPAN if attempt.part == STEP else attr.COMPENSATION_SPAN
    return template.format(attempt.task_name)


def attempt_attributes(attempt: Attempt) -> dict[str, str | int | bool]:
    """The attributes an attempt's span starts with (`attr.STEP_GROUP` when known)."""
    values: dict[str, str | int | bool] = {
        attr.SAGA_ID: attempt.saga_id,
        attr.SAGA_NAME: attempt.saga_name,
        attr.STEP_INDEX: attempt.index,
        attr.STEP_ATTEMPT: attempt.attempt,
        attr.STEP_PART: attempt.part,
    }
    if attempt.stage is not None:
        values[attr.STEP_GROUP] = attempt.stage
    if attempt.task_id:
        values[attr.STEP_TASK_ID] = attempt.task_id
    if attempt.resent:
        values[attr.STEP_RESENT] = True
    return values


def start_attempt_span(tracer: Tracer, attempt: Attempt) -> tuple[Span, Context]:
    """Start `attempt`'s span (not made current); with the context that holds it.

    The returned context keeps what else the message carried (baggage), so whatever
    reads it downstream sees the same.
    """
    carried = extract_request(attempt.request)
    origin = span_context_of(attempt.trace_context)
    links: list[Link] = []
    parent = carried
    if attempt.resent:
        if origin is not None:
            link_attributes: Attributes = {attr.LINK_TO: attr.LINK_ORIGINAL}
            links.append(Link(origin, link_attributes))
    elif origin is not None:
        parent = trace.set_span_in_context(NonRecordingSpan(origin), carried)
    span = tracer.start_span(
        span_name(attempt),
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attempt_attributes(attempt),
        links=links,
    )
    return span, trace.set_span_in_context(span, carried)
