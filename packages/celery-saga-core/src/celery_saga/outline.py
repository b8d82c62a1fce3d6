"""A plan as plain data: what the definition hash covers.

It walks the plan tree with `plan.visit`. A plan of steps, groups and transforms
only describes itself exactly as celery-saga 0.3 did, so its hash, stored with
every execution, is unchanged: executions started before an upgrade go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery_saga.plan import (
    Node,
    OutputSpec,
    Parallel,
    Step,
    SubSaga,
    Transform,
    When,
    callable_id,
    input_id,
    output_id,
    visit,
)
from celery_saga.tasks import task_name


class _Describe:
    """Each stage node as ``{"parallel", "steps", ["when"]}``; a transform as its name."""

    def step(self, node: Step) -> Any:
        name = task_name(node.task)
        comp = task_name(node.compensate) if node.compensate is not None else None
        item: list[Any] = [name, comp, node.no_compensation, input_id(node.input)]
        if node.external:
            item.append({"external": node.timeout})
        return {"parallel": False, "steps": [item]}

    def subsaga(self, node: SubSaga) -> Any:
        item = [{"saga": node.saga.name, "compensate": node.compensate}, input_id(node.input)]
        return {"parallel": False, "steps": [item]}

    def parallel(self, node: Parallel, members: list[Any]) -> Any:
        return {"parallel": True, "steps": [m["steps"][0] for m in members]}

    def transform(self, node: Transform) -> Any:
        return ("transform", callable_id(node.fn))

    def when(self, node: When, inner: Any) -> Any:
        return {**inner, "when": callable_id(node.predicate)}


def describe(plan: Sequence[Node], output: OutputSpec | None) -> list[Any]:
    """A JSON-able description of a plan and its output: what the hash covers."""
    described: list[Any] = []
    pending: list[Any] = []
    for node in plan:
        part = visit(node, _Describe())
        if isinstance(part, tuple):
            pending.append(part[1])
            continue
        stage = {"parallel": part["parallel"], "transforms": pending, "steps": part["steps"]}
        if "when" in part:
            stage["when"] = part["when"]
        described.append(stage)
        pending = []
    described.append({"final": pending})
    described.append({"output": output_id(output)})
    return described


def outline(plan: Sequence[Node], sealed: bool) -> list[Any]:
    """A plan as it grows, node by node (an earlier version of it is a prefix)."""
    nodes = [visit(node, _Describe()) for node in plan]
    return [list(n) if isinstance(n, tuple) else n for n in nodes] + (["output"] if sealed else [])
