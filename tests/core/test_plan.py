"""The plan tree: nodes, the one visitor, the stage compiler, the hash, the graph export,
and the definition-time checks of composition (self-containment, bad arguments)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from celery_saga import (
    Saga,
    SagaDefinitionError,
    external,
    parallelize,
    saga,
    saga_step,
    step,
    transform,
    when,
)
from celery_saga.plan import Parallel, Step, SubSaga, Transform, When, visit

app = Celery("plan", broker="memory://", set_as_current=False)


@app.task(shared=False, name="plan.undo")
def undo(data: Any) -> None:
    """Does nothing."""


@saga_step(compensate=undo)
@app.task(shared=False, name="plan.a")
def a(**kw: Any) -> dict[str, Any]:
    return {}


@app.task(shared=False, name="plan.b")
def b(**kw: Any) -> dict[str, Any]:
    return {}


def keep(ctx: dict[str, Any]) -> dict[str, Any]:
    return ctx


def fixed(ctx: dict[str, Any]) -> dict[str, Any]:
    return ctx


fixed.__module__ = "plan_fixture"  # the hash names transforms by module and name


def test_a_plain_plan_hashes_as_it_did_before_the_plan_tree() -> None:
    # Executions store this hash: an upgrade must not strand the ones in flight.
    plain = (
        Saga("plan.plain", app=app)
        .add_step(a)
        .add_transform(fixed)
        .add_parallel(a, (b, undo), input=fixed)
        .add_step("x.y", compensate="x.z", no_compensation=True)
        .add_transform(fixed)
    )
    assert plain.definition.hash == "0a9e0f1207149d7a"  # what celery-saga 0.3.0 computed


class Kinds:
    """A visitor that names each node kind it meets (children first)."""

    def step(self, node: Step) -> list[str]:
        return ["external" if node.external else "step"]

    def subsaga(self, node: SubSaga) -> list[str]:
        return ["saga"]

    def parallel(self, node: Parallel, members: list[list[str]]) -> list[str]:
        return [kind for m in members for kind in m] + ["parallel"]

    def transform(self, node: Transform) -> list[str]:
        return ["transform"]

    def when(self, node: When, inner: list[str]) -> list[str]:
        return [*inner, "when"]


def composed() -> tuple[Saga, Saga]:
    child = Saga("plan.child", app=app).add_step(a)
    parent = (
        Saga("plan.parent", app=app)
        .add_step(a)
        .add_transform(keep)
        .add_parallel(a, child, when=lambda ctx: True)
        .add_external("confirm", timeout=timedelta(minutes=5))
        .add_step(b, when=lambda ctx: False)
    )
    return child, parent


def test_one_visitor_walks_every_kind_of_node() -> None:
    _, parent = composed()
    walked = [kind for node in parent.nodes for kind in visit(node, Kinds())]
    assert walked == [
        "step",
        "transform",
        "step",
        "saga",
        "parallel",
        "when",
        "external",
        "step",
        "when",
    ]


def test_the_stage_compiler_numbers_steps_and_marks_their_kind_and_condition() -> None:
    child, parent = composed()
    definition = parent.definition
    assert [len(s.steps) for s in definition.stages] == [1, 2, 1, 1]
    assert [(s.index, s.stage, s.kind) for s in definition.steps] == [
        (0, 0, "task"),
        (1, 1, "task"),
        (2, 1, "saga"),
        (3, 2, "external"),
        (4, 3, "task"),
    ]
    assert definition.stages[1].transforms == (keep,)
    assert definition.step(2).child is child and definition.step(2).compensated
    assert definition.step(1).when is definition.step(2).when is not None
    assert definition.step(3).timeout == 300.0 and definition.step(3).task is None
    assert definition.step(4).when is not None


def test_the_hash_changes_with_a_condition_an_external_step_or_a_child() -> None:
    base = Saga("plan.h0", app=app).add_step(a).definition.describe()
    with_when = Saga("plan.h0", app=app).add_step(a, when=keep).definition.describe()
    assert base != with_when
    ext = Saga("plan.h1", app=app).add_external("x").definition.describe()
    ext_timeout = Saga("plan.h1", app=app).add_external("x", timeout=5).definition.describe()
    assert ext != ext_timeout


def test_the_mermaid_graph_shows_each_node_and_the_conditions_way_round() -> None:
    _, parent = composed()
    graph = parent.mermaid()
    assert graph.startswith("flowchart TD\n")
    assert parent.to_mermaid() == graph
    for label in ('s0["plan.a"]', '[["saga: plan.child"]]', "external: confirm"):
        assert label in graph
    assert 's0 -.->|"undo: plan.undo"| start' in graph
    assert 'c2{"when composed.#lt;lambda#gt;?"}' in graph
    assert '-->|"yes"|' in graph and '-->|"no"| done' in graph


def test_a_saga_cannot_contain_itself_directly_or_through_a_child() -> None:
    outer = Saga("plan.outer", app=app).add_step(a)
    with pytest.raises(SagaDefinitionError, match="cannot be its own step"):
        outer.add_saga(outer)
    middle = Saga("plan.middle", app=app).add_saga(outer)
    top = Saga("plan.top", app=app).add_saga(middle)
    with pytest.raises(SagaDefinitionError, match=r"'plan\.top' already contains 'plan\.outer'"):
        outer.add_saga(top)
    with pytest.raises(SagaDefinitionError, match="already contains"):
        outer.add_parallel(a, top)
    assert len(outer.definition.steps) == 1  # nothing was added


def test_a_functional_saga_cannot_name_itself_as_a_step() -> None:
    child = Saga("plan.fself", app=app).add_step(a)
    with pytest.raises(SagaDefinitionError, match="cannot be a step of itself"):

        @saga("plan.fself", app=app)
        def again(input: Any) -> Any:
            return step(child, input)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: s.add_saga(a), "add_saga\\(\\) takes a Saga"),
        (lambda s: s.add_external(""), "needs a non-empty name"),
        (lambda s: s.add_external("x", timeout=0), "timeout must be a positive number"),
        (lambda s: s.add_external("x", timeout="1h"), "timeout must be a positive number"),
        (lambda s: s.add_step(a, when=True), "when= must be a callable"),
        (lambda s: s.add_parallel(a, b, when="yes"), "when= must be a callable"),
    ],
)
def test_bad_composition_arguments_are_refused_at_definition(build: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        build(Saga("plan.bad", app=app))


def test_the_functional_api_composes_like_the_builder() -> None:
    child = Saga("plan.fchild", app=app).add_step(a)

    @saga("plan.functional", app=app)
    def functional(input: Any) -> Any:
        first = step(a, input)
        made = step(child, first)
        wrapped = when(step(b, made), lambda ctx: ctx.get("wrap"))
        paid = external("confirm", timeout=60)
        x, y = when(parallelize(step(a, paid), step(b, paid)), lambda ctx: True)
        return transform((wrapped, x, y))

    kinds = [(s.kind, s.when is not None) for s in functional.definition.steps]
    assert kinds == [
        ("task", False),
        ("saga", False),
        ("task", True),
        ("external", False),
        ("task", True),
        ("task", True),
    ]


def test_when_must_wrap_the_step_just_made() -> None:
    with pytest.raises(SagaDefinitionError, match="must wrap the step"):

        @saga("plan.badwhen", app=app)
        def bad(input: Any) -> Any:
            first = step(a, input)
            step(b, first)
            return when(first, lambda ctx: True)
