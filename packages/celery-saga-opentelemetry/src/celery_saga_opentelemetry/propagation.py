"""Trace contexts in and out of carriers: the record's, a message's, a Celery request's.

The record's `trace_context` is always a W3C carrier (``traceparent``, ``tracestate``),
whatever propagator the application configured; message headers use the configured
(global) propagator, as Celery's own instrumentation does.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()


class RequestGetter(Getter[Any]):
    """Reads a Celery request: message headers are its attributes (a worker's request),
    or entries of its ``headers`` dict (an eager call)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None:
            headers = getattr(carrier, "headers", None)
            value = headers.get(key) if isinstance(headers, dict) else None
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


REQUEST_GETTER = RequestGetter()


def carrier_of(span: Span) -> dict[str, str] | None:
    """The W3C carrier of `span`'s context (None for a span that is not sampled in)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier or None


def span_context_of(carrier: dict[str, str] | None) -> SpanContext | None:
    """The span context a W3C carrier names, or None when it names none (or is absent)."""
    if not carrier:
        return None
    found = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return found if found.is_valid else None


def extract_request(request: Any) -> Context:
    """The context the sender of `request`'s message injected (empty if none)."""
    return propagate.extract(request, getter=REQUEST_GETTER)


def inject_request(request: Any, context: Context) -> None:
    """Put `context` on `request` where a getter of its attributes reads it (Celery's does)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    for key, value in carrier.items():
        setattr(request, key, value)
