"""The trace hooks core calls (`celery_saga.tracing.TraceHooks`), and the worker's side.

In a worker, an attempt's span is started in Celery's ``task_prerun`` (before Celery's
own instrumentation starts its ``run/<task>`` span, which then nests under it) and
ended in ``task_postrun``; core's `attempt` makes it current around the body when no
other span was opened in between, and records a failure on it. Without a prerun (a
tracer Celery built before the receivers were connected), `attempt` starts it alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from celery_saga.headers import header_of
from celery_saga.tracing import Attempt, SagaRun, attempt_of
from celery_saga_opentelemetry import attributes as attr
from celery_saga_opentelemetry.propagation import carrier_of, inject_request
from celery_saga_opentelemetry.spans import start_attempt_span

#: Where the span started in ``task_prerun`` waits on the Celery request.
_OPEN = "_celery_saga_otel_span"


@dataclass
class _Open:
    """An attempt's span started in ``task_prerun``, until ``task_postrun`` ends it."""

    span: Span
    task_id: str | None
    #: The current span when it started: another one current in `attempt` means some
    #: other instrumentation opened a span under ours in between (Celery's ``run``).
    outer: Span
    ran: bool = False


class _Scope:
    """What core tells an attempt's span: the failure."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def failed(self, exc: BaseException) -> None:
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class SagaTraceHooks:
    """Spans for sagas, step attempts and compensations, on `tracer`."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    # -- core's hooks ------------------------------------------------------------------

    @contextmanager
    def saga_created(self, run: SagaRun) -> Iterator[dict[str, str] | None]:
        """The saga's span, current while its record is created and its first stage sent."""
        values: dict[str, str | bool] = {attr.SAGA_ID: run.saga_id, attr.SAGA_NAME: run.saga_name}
        if run.parent_id:
            values[attr.SAGA_PARENT_ID] = run.parent_id
        with self.tracer.start_as_current_span(
            attr.SAGA_SPAN.format(run.saga_name), kind=SpanKind.INTERNAL, attributes=values
        ) as span:
            yield carrier_of(span)
            if run.existing_id is not None:
                span.set_attribute(attr.SAGA_ID, run.existing_id)
                span.set_attribute(attr.SAGA_EXISTING, True)

    def inject(self, headers: dict[str, Any]) -> None:
        """The current context into a step or compensation message's headers."""
        propagate.inject(headers)

    @contextmanager
    def attempt(self, attempt: Attempt) -> Iterator[_Scope]:
        """The attempt's span around its body: the one ``task_prerun`` started, or a new one."""
        opened = getattr(attempt.request, _OPEN, None)
        if not isinstance(opened, _Open) or opened.task_id != attempt.task_id:
            span, _ = start_attempt_span(self.tracer, attempt)
            with trace.use_span(
                span, end_on_exit=True, record_exception=False, set_status_on_exception=False
            ):
                yield _Scope(span)
            return
        opened.ran = True
        span = opened.span
        if attempt.stage is not None:
            span.set_attribute(attr.STEP_GROUP, attempt.stage)
        if trace.get_current_span() is not opened.outer:
            yield _Scope(span)  # Celery's run span, a child of ours, is current: keep it
            return
        with trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield _Scope(span)

    # -- Celery's signals, in the worker -------------------------------------------------

    def on_prerun(
        self, sender: Any = None, task_id: Any = None, task: Any = None, **_: Any
    ) -> None:
        """Start the span of a saga attempt, and put its context where Celery's reads."""
        request = getattr(task, "request", None)
        header = header_of(request)
        if header is None:
            return
        outer = trace.get_current_span()
        span, context = start_attempt_span(self.tracer, attempt_of(request, header, task.name))
        setattr(request, _OPEN, _Open(span, task_id, outer))
        inject_request(request, context)

    def on_postrun(
        self, sender: Any = None, task_id: Any = None, task: Any = None, **_: Any
    ) -> None:
        """End the span ``task_prerun`` started for this delivery."""
        request = getattr(task, "request", None)
        opened = getattr(request, _OPEN, None)
        if not isinstance(opened, _Open) or opened.task_id != task_id:
            return
        setattr(request, _OPEN, None)
        if not opened.ran:
            opened.span.set_attribute(attr.STEP_RAN, False)
        opened.span.end()
