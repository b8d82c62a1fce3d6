"""Unit tests of context derivation, input resolution and the chain compiler."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_saga import Saga, saga, step, transform
from celery_saga.compiler import (
    REPLY_FAILURE,
    REPLY_SUCCESS,
    compensation_signature,
    header_of_signature,
    step_signature,
)
from celery_saga.context import (
    InputResolutionError,
    context_before,
    final_context,
    saga_output,
    step_input,
)
from celery_saga.headers import HEADER, SagaHeader
from celery_saga.ids import parse_task_id, step_task_id
from celery_saga.models import StepStatus
from celery_saga.runtime.start import new_execution

app = Celery("ctx", broker="memory://", set_as_current=False)
app.conf.task_routes = {"ctx.routed": {"queue": "special"}}


def _task(name: str) -> Any:
    @app.task(shared=False, name=name)
    def t(**kw: Any) -> dict[str, Any]:
        return {}

    return t


a, b, c, d = (_task(f"ctx.{n}") for n in "abcd")
routed = _task("ctx.routed")


def finished(execution: Any, outputs: dict[int, Any]) -> Any:
    for index, output in outputs.items():
        record = execution.step(index)
        record.status, record.output = StepStatus.SUCCESS, output
    return execution


def test_context_is_input_plus_outputs_in_plan_order_with_transforms() -> None:
    s = (
        Saga("ctx.s1")
        .add_step(a)
        .add_transform(lambda ctx: {**ctx, "total": ctx["x"] + ctx["y"]})
        .add_parallel(b, c)
        .add_step(d)
        .add_transform(lambda ctx: {"only": ctx["total"]})
    )
    defn = s.definition
    ex = finished(
        new_execution(defn, {"x": 1, "y": 2}, None, None),
        {0: {"y": 20}, 1: {"b": 1}, 2: {"b": 2, "c": 3}, 3: {"d": 4}},
    )
    assert context_before(defn, 0, ex) == {"x": 1, "y": 2}
    assert context_before(defn, 1, ex) == {"x": 1, "y": 20, "total": 21}
    # members merge in plan order: the later member wins a shared key
    assert context_before(defn, 2, ex) == {"x": 1, "y": 20, "total": 21, "b": 2, "c": 3}
    assert final_context(defn, ex) == {"only": 21}
    assert saga_output(defn, ex) == {"only": 21}


def test_mapper_input_and_its_errors() -> None:
    s = Saga("ctx.s2").add_step(a, input=lambda ctx: {"id": ctx["order_id"]})
    s.add_step(b, input=lambda ctx: ["not", "a", "dict"])
    s.add_step(c, input=lambda ctx: ctx["missing"])
    defn = s.definition
    ex = new_execution(defn, {"order_id": "o"}, None, None)
    assert step_input(defn.step(0), {"order_id": "o"}, ex) == {"id": "o"}
    with pytest.raises(InputResolutionError, match="must return a dict"):
        step_input(defn.step(1), {}, ex)
    with pytest.raises(InputResolutionError, match="KeyError"):
        step_input(defn.step(2), {}, ex)


def test_functional_transform_inputs_and_output_read_step_outputs() -> None:
    @saga("ctx.f1")
    def f1(input: Any) -> Any:
        x = step(a, input)
        y = step(b, x)
        step(c, transform((x, y), lambda p, q: {"sum": p["v"] + q["v"]}))
        step(d, transform((x, {"k": 1})))
        return transform(y, lambda q: q["v"] * 10)

    defn = f1.definition
    ex = finished(new_execution(defn, {"v": 0}, None, None), {0: {"v": 1}, 1: {"v": 2}})
    ctx = context_before(defn, 2, ex)
    assert step_input(defn.step(1), context_before(defn, 1, ex), ex) == {"v": 1}
    assert step_input(defn.step(2), ctx, ex) == {"sum": 3}
    assert step_input(defn.step(3), ctx, ex) == {"v": 1, "k": 1}
    assert saga_output(defn, ex) == 20


def test_step_signature_carries_header_task_id_and_replies() -> None:
    s = Saga("ctx.s3", app=app).add_step(a).add_step("svc.remote", compensate="svc.undo")
    s.add_step(routed)
    defn = s.definition
    ex = new_execution(defn, {}, None, "orders")
    sig = step_signature(defn, ex, defn.step(0), 1, {"k": 1})
    header = header_of_signature(sig)
    assert header == SagaHeader(
        ex.saga_id, "ctx.s3", 0, 1, False, defn.hash, "orders", run_queue="orders"
    )
    assert sig.options["task_id"] == step_task_id(ex.saga_id, 0, 1)
    assert parse_task_id(sig.options["task_id"]).index == 0
    assert sig.kwargs == {"k": 1} and sig.task == "ctx.a"
    assert sig.options["queue"] == "orders"  # unrouted step follows run(queue=)
    # Bookkeeping happens in the step's own worker: no reply callbacks at all.
    assert "link" not in sig.options and "link_error" not in sig.options

    by_name = step_signature(defn, ex, defn.step(1), 2, {})
    assert [e["task"] for e in by_name.options["link"]] == [REPLY_SUCCESS]
    assert [e["task"] for e in by_name.options["link_error"]] == [REPLY_FAILURE]
    assert by_name.options["link"][0]["options"]["queue"] == "orders"
    assert by_name.options["headers"][HEADER]["a"] == 2

    own_route = step_signature(defn, ex, defn.step(2), 1, {})
    assert "queue" not in own_route.options  # its task_routes entry decides


def test_compensation_signature_passes_compensation_data() -> None:
    s = Saga("ctx.s4", app=app).add_step(a, compensate="svc.undo")
    defn = s.definition
    ex = new_execution(defn, {}, None, None)
    record = ex.step(0)
    record.compensation_data = {"txn": 7}
    sig = compensation_signature(defn, ex, record, 3, countdown=1.5)
    header = header_of_signature(sig)
    assert header.compensation and header.attempt == 3
    assert sig.args == ({"txn": 7},) and sig.task == "svc.undo"
    assert sig.options["countdown"] == 1.5
    assert sig.options["task_id"] == step_task_id(ex.saga_id, 0, 3, compensation=True)
    assert "queue" not in sig.options  # no run(queue=): Celery routing decides
