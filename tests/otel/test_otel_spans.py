"""The span tree of a saga with the real OpenTelemetry SDK, on a real in-process worker.

One span per saga, a child per step attempt and per compensation, a failure recorded on
its attempt's span, Celery's own spans nested under the step spans whichever of the two
instrumentations came first, and nothing at all once uninstrumented.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from otel_support import TIMEOUT, named, of_saga, one, parent_of, require_sdk, wait_for

require_sdk()

from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from celery_saga import SagaCompensated  # noqa: E402
from celery_saga import tracing as core_tracing  # noqa: E402
from celery_saga_opentelemetry import CelerySagaInstrumentor  # noqa: E402


def traceparent(span: Any) -> str:
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def test_the_span_tree_of_a_saga_with_a_parallel_group_and_a_compensation(
    setup: Any, tracing: Any, instrumented: Any
) -> None:
    order = setup.sagas.order
    prefix = order.name.rsplit(".", 1)[0]
    with setup.worker():
        result = order.run(order_id="o-1", fail="notify")
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        sid = result.saga_id
        # saga, 4 step attempts, 3 compensations (notify has none)
        wait_for(lambda: len(of_saga(tracing.spans(), sid)) >= 8, TIMEOUT, "every span to end")
    spans = of_saga(tracing.spans(), sid)
    assert len(spans) == 8, sorted(s.name for s in spans)
    saga = one(spans, f"saga {order.name}")
    assert saga.parent is None and saga.kind is SpanKind.INTERNAL
    assert saga.attributes["saga.name"] == order.name
    # Its context is kept on the record and carried in every message's saga header.
    assert result.execution.trace_context == {"traceparent": traceparent(saga)}
    carried = [t for _, _, t in setup.sagas.seen]
    assert len(carried) == 7 and all(t == result.execution.trace_context for t in carried)
    expected = {
        # name: (index, group, part)
        f"saga.step {prefix}.reserve": (0, 0, "step"),
        f"saga.step {prefix}.charge": (1, 1, "step"),
        f"saga.step {prefix}.ship": (2, 1, "step"),
        f"saga.step {prefix}.notify": (3, 2, "step"),
        f"saga.compensate {prefix}.undo_ship": (2, 1, "compensation"),
        f"saga.compensate {prefix}.undo_charge": (1, 1, "compensation"),
        f"saga.compensate {prefix}.undo_reserve": (0, 0, "compensation"),
    }
    for name, (index, group, part) in expected.items():
        span = one(spans, name)
        assert span.context.trace_id == saga.context.trace_id, name
        assert parent_of(span) == saga.context.span_id, name
        assert span.kind is SpanKind.CONSUMER
        attributes = dict(span.attributes)
        assert attributes["saga.id"] == sid and attributes["saga.name"] == order.name
        assert attributes["saga.step.index"] == index, name
        assert attributes["saga.step.group"] == group, name
        assert attributes["saga.step.attempt"] == 1, name
        assert attributes["saga.step.part"] == part, name
        assert "saga.step.resent" not in attributes and not span.links, name
        assert attributes.get("saga.step.ran", True) is True, name
    # The failure is recorded on its attempt's span, and only there.
    notify = one(spans, f"saga.step {prefix}.notify")
    assert notify.status.status_code is StatusCode.ERROR
    assert "mail server down" in (notify.status.description or "")
    (event,) = [e for e in notify.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "mail server down" in event.attributes["exception.message"]
    others = [s for s in spans if s is not notify]
    assert all(s.status.status_code is StatusCode.UNSET for s in others)
    # The compensations ran in reverse order, the parallel members' in either order.
    comps = sorted((s for s in spans if s.name.startswith("saga.compensate")), key=_start)
    assert comps[-1].name.endswith(".undo_reserve")


def _start(span: Any) -> int:
    return int(span.start_time)


@pytest.mark.parametrize("first", ["celery", "saga"])
def test_celerys_run_spans_are_children_of_the_step_spans(
    setup: Any, tracing: Any, first: str
) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    ours, celerys = CelerySagaInstrumentor(), CeleryInstrumentor()
    both = [celerys, ours] if first == "celery" else [ours, celerys]
    for instrumentor in both:
        instrumentor.instrument(tracer_provider=tracing.provider)
    try:
        order = setup.sagas.order
        prefix = order.name.rsplit(".", 1)[0]
        tasks = [f"{prefix}.{what}" for what in ("reserve", "charge", "ship", "notify")]
        with setup.worker():
            result = order.run(order_id="c-1")
            result.get(timeout=TIMEOUT)
            wait_for(
                lambda: all(named(tracing.spans(), f"run/{task}") for task in tasks),
                TIMEOUT,
                "Celery's run spans",
            )
    finally:
        for instrumentor in reversed(both):
            instrumentor.uninstrument()
    spans = tracing.spans()
    saga = one(of_saga(spans, result.saga_id), f"saga {order.name}")
    for task in tasks:
        step = one(spans, f"saga.step {task}")
        run = one(spans, f"run/{task}")
        assert parent_of(step) == saga.context.span_id, task
        assert run.context.trace_id == saga.context.trace_id, task
        assert parent_of(run) == step.context.span_id, task
        assert run.attributes["celery.task_name"] == task
        assert step.start_time <= run.start_time, task
        if first == "celery":  # its receivers were moved: its postrun runs before ours
            assert run.end_time <= step.end_time, task


def test_uninstrument_stops_the_spans_and_the_headers_carry_nothing(
    setup: Any, tracing: Any, instrumented: Any
) -> None:
    order = setup.sagas.order
    with setup.worker():
        traced = order.run(order_id="u-1")
        traced.get(timeout=TIMEOUT)
        wait_for(lambda: len(of_saga(tracing.spans(), traced.saga_id)) >= 5, TIMEOUT, "spans")
        assert tracing_hooks() is not None
        assert traced.execution.trace_context is not None
        assert all(tp and t for _, tp, t in setup.sagas.seen)
        seen = len(setup.sagas.seen)
        ended = len(tracing.spans())

        instrumented.uninstrument()
        assert tracing_hooks() is None
        plain = order.run(order_id="u-2")
        plain.get(timeout=TIMEOUT)
    assert plain.execution.trace_context is None
    assert len(tracing.spans()) == ended
    after = setup.sagas.seen[seen:]
    assert len(after) == 4 and all(tp is None and t is None for _, tp, t in after), after


def tracing_hooks() -> Any:
    return core_tracing.hooks


def test_the_instrumentor_is_found_by_its_entry_point() -> None:
    found = {e.name: e for e in entry_points(group="opentelemetry_instrumentor")}
    assert found["celery_saga"].load() is CelerySagaInstrumentor
    assert list(CelerySagaInstrumentor().instrumentation_dependencies()) == [
        "celery-saga-core >= 0.5"
    ]
