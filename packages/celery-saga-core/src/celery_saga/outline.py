"""A plan as plain data (what the definition hash covers) and as a Mermaid graph.

Both walk the plan tree with `plan.visit`. A plan of steps, groups and transforms
only describes itself exactly as celery-saga 0.3 did, so its hash, stored with
every execution, is unchanged: executions started before an upgrade go on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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

# -- the hashed description -------------------------------------------------------------


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


# -- the Mermaid graph ------------------------------------------------------------------


@dataclass
class _Fragment:
    """Part of a graph: its nodes and edges, where it is entered and left."""

    lines: list[str] = field(default_factory=list)
    enter: list[str] = field(default_factory=list)
    leave: list[str] = field(default_factory=list)


class _Graph:
    """Mermaid flowchart fragments; node ids are numbered in plan order."""

    def __init__(self) -> None:
        self.count = 0

    def _node(self, label: str, shape: str = "[{}]") -> tuple[str, str]:
        self.count += 1
        ident = f"n{self.count}"
        return ident, ident + shape.format(_quote(label))

    def _leaf(self, label: str, shape: str = "[{}]") -> _Fragment:
        ident, line = self._node(label, shape)
        return _Fragment([line], [ident], [ident])

    def step(self, node: Step) -> _Fragment:
        name = task_name(node.task)
        if node.external:
            wait = f" (timeout {node.timeout:g} s)" if node.timeout else ""
            return self._leaf(f"external: {name}{wait}", "[/{}/]")
        comp = f" / undo: {task_name(node.compensate)}" if node.compensate is not None else ""
        return self._leaf(f"{name}{comp}")

    def subsaga(self, node: SubSaga) -> _Fragment:
        return self._leaf(f"saga: {node.saga.name}", "[[{}]]")

    def parallel(self, node: Parallel, members: list[_Fragment]) -> _Fragment:
        lines = [line for m in members for line in m.lines]
        enter = [i for m in members for i in m.enter]
        leave = [i for m in members for i in m.leave]
        return _Fragment(lines, enter, leave)

    def transform(self, node: Transform) -> _Fragment:
        return self._leaf(f"transform: {callable_id(node.fn)}", "({})")

    def when(self, node: When, inner: _Fragment) -> _Fragment:
        ident, line = self._node(f"when {callable_id(node.predicate)}", "{{{}}}")
        edges = [f"{ident} -->|yes| {target}" for target in inner.enter]
        return _Fragment([line, *inner.lines, *edges], [ident], [*inner.leave, ident])


def mermaid(name: str, plan: Sequence[Node]) -> str:
    """The plan as a Mermaid flowchart (top to bottom), one node per step."""
    graph = _Graph()
    start = _Fragment([f"start([{_quote(name)}])"], ["start"], ["start"])
    lines = list(start.lines)
    previous = start.leave
    for node in plan:
        part = visit(node, graph)
        lines += part.lines
        lines += [f"{a} --> {b}" for a in previous for b in part.enter]
        previous = part.leave
    lines.append("done([done])")
    lines += [f"{a} --> done" for a in previous]
    return "flowchart TD\n" + "\n".join(f"    {line}" for line in lines) + "\n"


def _quote(label: str) -> str:
    return '"' + re.sub(r'["\n]', "'", label) + '"'
