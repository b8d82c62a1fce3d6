"""Unit tests of the definition API: builder, functional tracing, decorators, errors."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_saga import (
    Saga,
    SagaDefinitionError,
    parallelize,
    registry,
    saga,
    saga_step,
    saga_task,
    step,
    transform,
)
from celery_saga.definition import (
    ContextInput,
    ContextSource,
    DictOutput,
    LiteralInput,
    MapperInput,
    StepOutputSource,
    TransformInput,
)

app = Celery("defs", broker="memory://", set_as_current=False)


@app.task(shared=False, name="defs.refund")
def refund(data: Any) -> None: ...


@saga_step(compensate=refund)
@app.task(shared=False, name="defs.charge")
def charge(**kw: Any) -> dict[str, Any]:
    return {}


@saga_step(compensate="defs.release")
@app.task(shared=False, name="defs.reserve")
def reserve(**kw: Any) -> dict[str, Any]:
    return {}


@saga_step(no_compensation=True)
@app.task(shared=False, name="defs.notify")
def notify(**kw: Any) -> dict[str, Any]:
    return {}


@app.task(shared=False, name="defs.plain")
def plain(**kw: Any) -> dict[str, Any]:
    return {}


def test_builder_compiles_stages_in_plan_order() -> None:
    s = (
        Saga("defs.b1")
        .add_step(plain, no_compensation=True)
        .add_transform(lambda c: c)
        .add_parallel(charge, (reserve, "defs.other_release"))
        .add_step(notify)
    )
    d = s.definition
    assert [len(st.steps) for st in d.stages] == [1, 2, 1]
    assert [st.parallel for st in d.stages] == [False, True, False]
    assert [spec.index for spec in d.steps] == [0, 1, 2, 3]
    assert [spec.stage for spec in d.steps] == [0, 1, 1, 2]
    assert d.stages[1].transforms and not d.stages[0].transforms
    assert (
        d.step(1).compensation_name == "defs.refund"
        and d.step(1).compensation is refund._get_current_object()
    )
    assert d.step(2).compensation_name == "defs.other_release"  # tuple overrides decorator
    assert d.step(3).no_compensation and not d.step(3).compensated
    assert d.step(0).no_compensation
    assert d.app is app and not any(spec.by_name for spec in d.steps)


def test_steps_by_task_name_and_compensate_by_name() -> None:
    s = Saga("defs.b2", app=app).add_step("svc.reserve", compensate="svc.release")
    spec = s.definition.step(0)
    assert spec.by_name and spec.task is None and spec.task_name == "svc.reserve"
    assert spec.compensation_name == "svc.release" and spec.compensation is None


def test_add_step_compensate_overrides_decorator() -> None:
    s = Saga("defs.b3").add_step(charge, compensate="defs.other")
    assert s.definition.step(0).compensation_name == "defs.other"


def test_definition_hash_is_stable_and_changes_with_the_plan() -> None:
    a = Saga("defs.h1").add_step(charge).add_step(notify)
    b = Saga("defs.h2").add_step(charge).add_step(notify)
    assert (
        a.definition.hash
        == Saga("defs.h1", app=app).add_step(charge).add_step(notify).definition.hash
    )
    assert a.definition.hash != b.definition.hash  # the name is part of it
    a2 = Saga("defs.h3").add_step(charge)
    h = a2.definition.hash
    a2.add_step(notify)
    assert a2.definition.hash != h


def test_input_mapper_and_options_are_kept() -> None:
    mapper = lambda ctx: {"x": ctx["y"]}  # noqa: E731
    s = Saga("defs.b4").add_step(plain, input=mapper, options={"queue": "q1", "priority": 3})
    spec = s.definition.step(0)
    assert isinstance(spec.input, MapperInput) and spec.input.fn is mapper
    assert spec.options == {"queue": "q1", "priority": 3}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Saga("defs.e1").add_step(lambda **kw: kw), "plain function"),
        (lambda: Saga("defs.e2").add_step(42), "Celery task or a task name"),
        (lambda: Saga("defs.e3").add_step(plain, compensate=3.5), "compensate"),
        (lambda: Saga("defs.e4").add_step(""), "must not be empty"),
        (lambda: Saga("defs.e5").add_parallel(), "at least one task"),
        (lambda: Saga("defs.e6").add_parallel((plain,)), "(task, compensate)"),
        (lambda: Saga("defs.e7").add_transform("not callable"), "needs a callable"),
        (lambda: Saga("defs.e8").add_step(plain, input="ctx"), "must be a callable"),
        (lambda: Saga("defs.e9").add_step(plain, options={"link": 1}), "unknown options"),
        (lambda: Saga(""), "non-empty name"),
        (lambda: Saga("defs.e10").definition, "has no steps"),
        (lambda: saga_step(compensate=lambda d: None), "plain function"),
    ],
)
def test_definition_errors_say_what_to_do(build: Any, message: str) -> None:
    with pytest.raises(SagaDefinitionError, match=message):
        build()


def test_duplicate_saga_name_with_a_different_definition_is_refused() -> None:
    keep = Saga("defs.dup").add_step(charge).add_step(notify)  # noqa: F841
    Saga("defs.dup").add_step(charge)  # a prefix: may still become the same saga
    with pytest.raises(SagaDefinitionError, match="two different sagas"):
        Saga("defs.dup").add_step(notify)


def test_same_name_on_another_app_is_allowed() -> None:
    other = Celery("defs-other", broker="memory://", set_as_current=False)
    keep = Saga("defs.multi").add_step(charge)  # noqa: F841
    Saga("defs.multi", app=other).add_step("x.y")


def test_a_name_on_two_apps_is_looked_up_without_walking_either_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = Celery("defs-other2", broker="memory://", set_as_current=False)
    mine = Saga("defs.multi2").add_step(charge).add_step(notify)
    theirs = Saga("defs.multi2", app=other).add_step("x.y")
    walked: list[str] = []
    real = Saga.outline
    monkeypatch.setattr(Saga, "outline", lambda self: walked.append(self.name) or real(self))
    # Every step's message is looked up by name: one saga per app, nothing to compare.
    assert registry.lookup("defs.multi2", other) is theirs
    assert registry.lookup("defs.multi2", mine.app) is mine
    assert walked == []


def test_saga_task_combines_task_and_step_metadata() -> None:
    @saga_task(app, compensate="defs.undo_thing", shared=False)
    def thing(**kw: Any) -> dict[str, Any]:
        return {}

    assert thing.name == "test_saga_task_combines_task_and_step_metadata.<locals>.thing"
    spec = Saga("defs.st").add_step(thing).definition.step(0)
    assert spec.compensation_name == "defs.undo_thing" and spec.task is thing._get_current_object()


def test_functional_saga_traces_into_the_same_definition() -> None:
    @saga("defs.f1")
    def f1(input: Any) -> Any:
        a = step(plain, input)
        b, c = parallelize(step(charge, a), step(reserve, a))
        step(notify, transform((b, c), lambda x, y: {**x, **y}))
        return b

    d = f1.definition
    assert [len(st.steps) for st in d.stages] == [1, 2, 1]
    assert isinstance(d.step(0).input, ContextInput)
    assert isinstance(d.step(1).input, ContextInput)  # a step result as input: the context
    spec = d.step(3).input
    assert isinstance(spec, TransformInput)
    assert spec.sources == (StepOutputSource(1), StepOutputSource(2))
    assert d.output == StepOutputSource(1)
    assert f1.sealed and f1.name == "defs.f1"


def test_functional_literal_input_and_outputs() -> None:
    @saga("defs.f2")
    def f2(input: Any) -> Any:
        a = step(plain, {"fixed": 1})
        step(notify, transform(input))
        return {"first": a, "all": input}

    d = f2.definition
    assert d.step(0).input == LiteralInput({"fixed": 1})
    assert d.step(1).input == TransformInput((ContextSource(),), None)
    assert d.output == DictOutput((("first", StepOutputSource(0)), ("all", ContextSource())))


def test_functional_misuse_is_explained() -> None:
    with pytest.raises(SagaDefinitionError, match="references, not data"):

        @saga("defs.f3")
        def f3(input: Any) -> Any:
            return step(plain, {"amount": input["amount"] * 2})

    with pytest.raises(SagaDefinitionError, match="only valid inside"):
        step(plain)

    with pytest.raises(SagaDefinitionError, match="same group"):

        @saga("defs.f4")
        def f4(input: Any) -> Any:
            a = step(plain, input)
            return parallelize(a, step(notify, transform(a)))

    with pytest.raises(SagaDefinitionError, match="its own arguments"):

        @saga("defs.f5")
        def f5(input: Any) -> Any:
            a = step(plain, input)
            step(notify, input)
            return parallelize(a)
