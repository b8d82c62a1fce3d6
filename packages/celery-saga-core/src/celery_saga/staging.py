"""The plan tree compiled into stages: what the runtime runs, one stage at a time.

Every top-level node but a transform becomes a stage (a step, a child saga, or a
parallel group; a condition sets `when` on the steps it covers); transforms attach
to the stage after them, or to the end. Steps are numbered in plan order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery_saga.definition import SagaDefinition, Stage, StepSpec
from celery_saga.errors import SagaDefinitionError
from celery_saga.plan import (
    ContextFn,
    Node,
    OutputSpec,
    Parallel,
    Step,
    SubSaga,
    Transform,
    When,
    visit,
)
from celery_saga.tasks import task_name

if TYPE_CHECKING:
    from celery import Celery

#: A stage node compiled: its steps (index and stage still 0) and whether they are a group.
_Part = tuple[list[StepSpec], bool]


class _Specs:
    """Each node as the step specs it contributes (a transform as its function)."""

    def step(self, node: Step) -> Any:
        comp = node.compensate
        spec = StepSpec(
            index=0,
            stage=0,
            task_name=task_name(node.task),
            task=None if isinstance(node.task, str) or node.external else node.task,
            compensation_name=task_name(comp) if comp is not None else None,
            compensation=None if comp is None or isinstance(comp, str) else comp,
            no_compensation=node.no_compensation,
            input=node.input,
            options=node.options,
            retry=node.retry,
            compensation_retry=node.compensation_retry,
            kind="external" if node.external else "task",
            timeout=node.timeout,
        )
        return [spec], False

    def subsaga(self, node: SubSaga) -> Any:
        spec = StepSpec(
            index=0,
            stage=0,
            task_name=node.saga.name,
            no_compensation=not node.compensate,
            input=node.input,
            kind="saga",
            child=node.saga,
        )
        return [spec], False

    def parallel(self, node: Parallel, members: list[Any]) -> Any:
        return [spec for specs, _ in members for spec in specs], True

    def transform(self, node: Transform) -> Any:
        return node.fn

    def when(self, node: When, inner: Any) -> Any:
        specs, parallel = inner
        return [replace(spec, when=node.predicate) for spec in specs], parallel


def compile_plan(
    name: str,
    plan: Sequence[Node],
    *,
    app: Celery,
    output: OutputSpec | None = None,
    deadline: float | None = None,
) -> SagaDefinition:
    """The definition of saga `name` from its plan: stages, numbered steps, its hash."""
    stages: list[Stage] = []
    pending: list[ContextFn] = []
    index = 0
    for node in plan:
        part = visit(node, _Specs())
        if callable(part):
            pending.append(part)
            continue
        specs, parallel = part
        numbered = []
        for spec in specs:
            numbered.append(replace(spec, index=index, stage=len(stages)))
            index += 1
        stages.append(
            Stage(
                index=len(stages),
                steps=tuple(numbered),
                parallel=parallel,
                transforms=tuple(pending),
            )
        )
        pending = []
    if not stages:
        raise SagaDefinitionError(
            f"saga {name!r} has no steps: add one with add_step() before running it"
        )
    return SagaDefinition(
        name=name,
        stages=tuple(stages),
        app=app,
        final_transforms=tuple(pending),
        output=output,
        deadline=deadline,
        plan=tuple(plan),
    )
