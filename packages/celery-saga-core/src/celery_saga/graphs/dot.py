"""A `Graph` in Graphviz DOT: ``dot -Tsvg saga.dot > saga.svg``.

Every string is double-quoted with ``\\`` and ``"`` escaped and ``&`` written as
``&amp;`` (Graphviz reads entities in labels), so a label is shown as it was
written. Members of a stage share a rank (side by side); compensation edges are
dashed, point back up and do not take part in the ranking. Tooltips carry each
node's details (status, attempt, times).
"""

from __future__ import annotations

from celery_saga.graphs.colours import COMPENSATION_EDGE, FORWARD_EDGE, colour_of
from celery_saga.graphs.escape import clean, one_line
from celery_saga.graphs.model import Graph, GraphEdge, GraphNode

#: Graphviz shape and style by node kind.
SHAPES: dict[str, tuple[str, str]] = {
    "start": ("oval", "filled"),
    "end": ("oval", "filled,bold"),
    "step": ("box", "filled,rounded"),
    "external": ("parallelogram", "filled"),
    "saga": ("box", "filled,bold"),
    "transform": ("box", "filled,rounded,dashed"),
    "condition": ("diamond", "filled"),
}


def quote(value: object, *, lines: bool = False) -> str:
    """A DOT double-quoted string; with `lines`, line breaks become ``\\n`` escapes."""
    text = clean(value) if lines else one_line(value)
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{text}"'


def _attrs(values: dict[str, object]) -> str:
    return ", ".join(
        f"{key}={quote(value, lines=key == 'tooltip')}" for key, value in values.items()
    )


def _node(node: GraphNode) -> str:
    shape, style = SHAPES.get(node.kind, SHAPES["step"])
    colour = colour_of(node.status)
    values: dict[str, object] = {
        "label": node.label,
        "shape": shape,
        "style": style,
        "fillcolor": colour.fill,
        "color": colour.stroke,
        "fontcolor": colour.text,
    }
    if node.kind == "saga":
        values["peripheries"] = 2
    tooltip = "\n".join(f"{name}: {value}" for name, value in node.details)
    values["tooltip"] = f"{node.label}\n{tooltip}" if tooltip else node.label
    if node.index is not None:
        values["id"] = f"step-{node.index}"
    return f"{quote(node.id)} [{_attrs(values)}];"


def _edge(edge: GraphEdge) -> str:
    values: dict[str, object] = {"color": FORWARD_EDGE}
    if edge.style == "compensation":
        values = {"color": COMPENSATION_EDGE, "fontcolor": COMPENSATION_EDGE, "style": "dashed"}
        values["constraint"] = "false"
    if edge.label:
        values["label"] = edge.label
    return f"{quote(edge.source)} -> {quote(edge.target)} [{_attrs(values)}];"


def to_dot(graph: Graph) -> str:
    """The graph as DOT source (a ``digraph``, top to bottom)."""
    lines = [
        f"digraph {quote(graph.name)} {{",
        f"  graph [rankdir=TB, fontname=Helvetica, label={quote(graph.title)}, labelloc=t];",
        "  node [fontname=Helvetica, fontsize=11];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    lines += [f"  {_node(node)}" for node in graph.nodes]
    stages: dict[int, list[str]] = {}
    for node in graph.nodes:
        if node.index is not None and node.stage is not None:
            stages.setdefault(node.stage, []).append(node.id)
    for ids in stages.values():
        if len(ids) > 1:
            lines.append(f"  {{ rank=same; {' '.join(quote(i) + ';' for i in ids)} }}")
    lines += [f"  {_edge(edge)}" for edge in graph.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
