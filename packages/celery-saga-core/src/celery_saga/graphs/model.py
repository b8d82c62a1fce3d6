"""A saga as a graph of nodes and edges, from its definition or from a stored execution.

`definition_graph` walks the plan tree with `plan.visit` (the one dispatch on node
kinds): the start, one node per step, a decision node per condition, a node per
transform, the end; forward edges stage to stage, condition edges ("yes" to the
guarded node, "no" around it), and a dashed compensation edge from each step that
has a compensation back to the stage before it. `execution_graph` builds the same
shape from the stored step records alone (stages, kinds, compensation names,
statuses), so it works in a process that does not define the saga. Renderers
(`mermaid`, `dot`, `svg`) only read a `Graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from celery_saga.definition import SagaDefinition
from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus, StepKind, StepRecord
from celery_saga.plan import Node, Parallel, Step, SubSaga, Transform, When, callable_id, visit
from celery_saga.tasks import task_name
from celery_saga.views import iso

#: What a node is: the two ends, a step of each `StepKind`, a transform, a condition.
NODE_KINDS = ("start", "end", "step", "external", "saga", "transform", "condition")
#: What an edge is: the forward flow, a compensation (dashed, pointing back), a condition.
EDGE_STYLES = ("forward", "compensation", "condition")

START, END = "start", "done"


@dataclass(frozen=True)
class GraphNode:
    """One node. `index` is the step's plan position (None for non-steps); `details`
    are (name, text) pairs a renderer may show as a tooltip."""

    id: str
    label: str
    kind: str
    status: str | None = None
    stage: int | None = None
    compensate: str | None = None
    index: int | None = None
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GraphEdge:
    """One edge from `source` to `target` (node ids), drawn in `style`."""

    source: str
    target: str
    style: str = "forward"
    label: str | None = None


@dataclass(frozen=True)
class Graph:
    """A saga's graph: `status` and `saga_id` are set for an execution, None for a definition."""

    name: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    status: str | None = None
    saga_id: str | None = None

    def node(self, node_id: str) -> GraphNode:
        """The node with id `node_id` (KeyError if there is none)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def title(self) -> str:
        """A one-line caption: the saga's name, and for an execution its id and status."""
        if self.saga_id is None:
            return f"saga {self.name}"
        return f"saga {self.name} {self.saga_id} ({(self.status or '?').upper()})"


# -- from a definition ------------------------------------------------------------------


class _Planned(Protocol):
    """A `celery_saga.Saga` (the builder): its name and plan as built so far."""

    name: str

    @property
    def nodes(self) -> tuple[Node, ...]: ...


@dataclass
class _Fragment:
    """Part of the graph: its nodes and edges, where it is entered and how it is left."""

    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    enter: list[str] = field(default_factory=list)
    #: (node id, edge style, edge label) of each way out to what comes next.
    leave: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: The step nodes of a stage (a transform has none): where compensation goes back to.
    steps: list[GraphNode] = field(default_factory=list)


class _Draw:
    """Each plan node as a graph fragment; steps get ids ``s<index>`` in plan order."""

    def __init__(self) -> None:
        self.index = 0
        self.stage = 0
        self.others = 0

    def _leaf(self, node: GraphNode) -> _Fragment:
        out: list[tuple[str, str, str | None]] = [(node.id, "forward", None)]
        steps = [node] if node.index is not None else []
        return _Fragment([node], [], [node.id], out, steps)

    def _step_node(
        self, label: str, kind: str, compensate: str | None, details: list[str]
    ) -> GraphNode:
        node = GraphNode(
            id=f"s{self.index}",
            label=label,
            kind=kind,
            stage=self.stage,
            compensate=compensate,
            index=self.index,
            details=_pairs(details),
        )
        self.index += 1
        return node

    def _other_id(self, prefix: str) -> str:
        self.others += 1
        return f"{prefix}{self.others}"

    def step(self, node: Step) -> _Fragment:
        name = task_name(node.task)
        comp = None
        if node.compensate is not None and not node.no_compensation:
            comp = task_name(node.compensate)
        details = ["task", name, "compensation", comp or "none"]
        if node.external:
            wait = f" (timeout {_seconds(node.timeout)})" if node.timeout else ""
            details += ["timeout", _seconds(node.timeout) if node.timeout else "none"]
            return self._leaf(self._step_node(f"external: {name}{wait}", "external", comp, details))
        return self._leaf(self._step_node(name, "step", comp, details))

    def subsaga(self, node: SubSaga) -> _Fragment:
        name = node.saga.name
        comp = name if node.compensate else None
        details = ["child saga", name, "compensation", "revert the child" if comp else "none"]
        return self._leaf(self._step_node(f"saga: {name}", "saga", comp, details))

    def parallel(self, node: Parallel, members: list[_Fragment]) -> _Fragment:
        return _Fragment(
            nodes=[n for m in members for n in m.nodes],
            edges=[e for m in members for e in m.edges],
            enter=[i for m in members for i in m.enter],
            leave=[out for m in members for out in m.leave],
            steps=[s for m in members for s in m.steps],
        )

    def transform(self, node: Transform) -> _Fragment:
        fn = callable_id(node.fn) or "?"
        label = f"transform: {_short(node.fn)}"
        made = GraphNode(self._other_id("t"), label, "transform", details=(("function", fn),))
        return self._leaf(made)

    def when(self, node: When, inner: _Fragment) -> _Fragment:
        fn = callable_id(node.predicate) or "?"
        decision = GraphNode(
            self._other_id("c"),
            f"when {_short(node.predicate)}?",
            "condition",
            stage=self.stage,
            details=(("predicate", fn),),
        )
        yes = [GraphEdge(decision.id, target, "condition", "yes") for target in inner.enter]
        return _Fragment(
            nodes=[decision, *inner.nodes],
            edges=[*yes, *inner.edges],
            enter=[decision.id],
            leave=[*inner.leave, (decision.id, "condition", "no")],
            steps=inner.steps,
        )


def definition_graph(saga: _Planned | SagaDefinition) -> Graph:
    """The graph of a saga's plan (a `Saga`, builder or functional, or a `SagaDefinition`)."""
    plan: Sequence[Node] = saga.plan if isinstance(saga, SagaDefinition) else saga.nodes
    draw = _Draw()
    nodes = [GraphNode(START, saga.name, "start")]
    edges: list[GraphEdge] = []
    leave: list[tuple[str, str, str | None]] = [(START, "forward", None)]
    previous: list[GraphNode] = []
    for item in plan:
        part = visit(item, draw)
        nodes += part.nodes
        edges += [GraphEdge(a, b, style, label) for a, style, label in leave for b in part.enter]
        edges += part.edges
        leave = part.leave
        if part.steps:  # a stage (a transform is not one)
            edges += _compensations(part.steps, previous)
            previous = part.steps
            draw.stage += 1
    nodes.append(GraphNode(END, "done", "end"))
    edges += [GraphEdge(a, END, style, label) for a, style, label in leave]
    return Graph(saga.name, tuple(nodes), tuple(edges))


# -- from a stored execution ------------------------------------------------------------

_KINDS = {
    StepKind.TASK.value: "step",
    StepKind.EXTERNAL.value: "external",
    StepKind.SAGA.value: "saga",
}


def execution_graph(execution: SagaExecution) -> Graph:
    """The graph of one execution from its stored records, each step coloured by status.

    Conditions and transforms are not stored, so they do not appear; a step whose
    condition was false shows as SKIPPED.
    """
    by_stage: dict[int, list[StepRecord]] = {}
    for record in sorted(execution.steps, key=lambda s: (s.stage, s.index)):
        by_stage.setdefault(record.stage, []).append(record)
    status = execution.status.value
    start = GraphNode(
        START, execution.saga_name, "start", status=status, details=_saga_details(execution)
    )
    nodes = [start]
    edges: list[GraphEdge] = []
    leave = [START]
    previous: list[GraphNode] = []
    for stage in sorted(by_stage):
        members = [_record_node(record) for record in by_stage[stage]]
        nodes += members
        edges += [GraphEdge(a, m.id) for a in leave for m in members]
        edges += _compensations(members, previous)
        leave = [m.id for m in members]
        previous = members
    done = execution.status is SagaStatus.COMPLETED
    nodes.append(GraphNode(END, "done", "end", status=status if done else None))
    edges += [GraphEdge(a, END) for a in leave]
    return Graph(execution.saga_name, tuple(nodes), tuple(edges), status, execution.saga_id)


def _record_node(record: StepRecord) -> GraphNode:
    kind = _KINDS.get(record.kind, "step")
    label = record.task_name if kind == "step" else f"{record.kind}: {record.task_name}"
    comp: str | None = None
    if not record.no_compensation:
        comp = record.task_name if kind == "saga" else record.compensation_task_name
    return GraphNode(
        id=f"s{record.index}",
        label=label,
        kind=kind,
        status=record.status.value,
        stage=record.stage,
        compensate=comp,
        index=record.index,
        details=_record_details(record),
    )


def _record_details(record: StepRecord) -> tuple[tuple[str, str], ...]:
    """Status, attempt, times, worker and errors of a step and its compensation."""
    rows = [
        "step",
        str(record.index),
        "status",
        record.status.value,
        "attempt",
        str(record.attempt),
        "started",
        iso(record.started_at),
        "finished",
        iso(record.finished_at),
        "took",
        _took(record.started_at, record.finished_at),
        "worker",
        record.worker,
        "error",
        record.error,
        "child saga",
        record.child_id,
        "earlier attempts",
        str(len(record.history)) if record.history else None,
    ]
    if record.comp_attempt:
        rows += [
            "compensation",
            f"{record.compensation_task_name or record.task_name}, attempt {record.comp_attempt}",
            "compensation started",
            iso(record.comp_started_at),
            "compensation finished",
            iso(record.comp_finished_at),
            "compensation worker",
            record.comp_worker,
            "compensation error",
            record.comp_error,
        ]
    return _pairs(rows)


def _saga_details(execution: SagaExecution) -> tuple[tuple[str, str], ...]:
    finished = execution.status in TERMINAL_STATUSES
    return _pairs(
        [
            "saga",
            execution.saga_id,
            "status",
            execution.status.value,
            "created",
            iso(execution.created_at),
            "finished",
            iso(execution.finished_at) if finished else None,
            "error",
            execution.error,
            "parent",
            execution.parent_id,
        ]
    )


# -- shared -----------------------------------------------------------------------------


def _compensations(steps: list[GraphNode], previous: list[GraphNode]) -> list[GraphEdge]:
    """A dashed edge from each compensated step back to the stage before (or the start).

    It points at the first node of that stage only: one edge per compensation, and a
    layout that breaks cycles depth first (Mermaid's) then never turns a stage upside down.
    """
    target = previous[0].id if previous else START
    edges = []
    for node in steps:
        if node.compensate is not None:
            verb = "revert" if node.kind == "saga" else "undo"
            edges.append(GraphEdge(node.id, target, "compensation", f"{verb}: {node.compensate}"))
    return edges


def _pairs(flat: Sequence[str | None]) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs from a flat list, leaving out the values that are None."""
    pairs = zip(flat[0::2], flat[1::2])
    return tuple((str(name), value) for name, value in pairs if value is not None)


def _short(fn: object) -> str:
    """A callable's short name: its qualified name, without the module and ``<locals>``."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return str(name).replace(".<locals>", "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _took(start: float | None, end: float | None) -> str | None:
    if start is None or end is None:
        return None
    return f"{(end - start) * 1000:.1f} ms"
