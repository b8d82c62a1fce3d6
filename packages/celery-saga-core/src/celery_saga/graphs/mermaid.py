"""A `Graph` as a Mermaid flowchart (top to bottom), for Markdown, notebooks and docs.

Labels are quoted and their special characters written as Mermaid entity codes
(``#quot;``, ``#lt;``...), so a step named ``<script>`` is shown, never run; line
breaks become spaces. Node shapes say the kind: a parallelogram for an external
step, a subroutine for a child saga, a rhombus for a condition. Statuses are
classes with the colours of `graphs.colours`; compensation edges are dashed.
"""

from __future__ import annotations

from celery_saga.graphs.colours import COMPENSATION_EDGE, colour_of
from celery_saga.graphs.escape import one_line
from celery_saga.graphs.model import Graph, GraphEdge, GraphNode

#: Node shapes by kind: the text goes between the two halves.
SHAPES: dict[str, tuple[str, str]] = {
    "start": ("([", "])"),
    "end": ("([", "])"),
    "step": ("[", "]"),
    "external": ("[/", "/]"),
    "saga": ("[[", "]]"),
    "transform": ("(", ")"),
    "condition": ("{", "}"),
}

#: Characters a quoted Mermaid label cannot hold as they are, and their entity codes.
#: ``#`` goes first: it starts every code. ``%`` too, since Mermaid looks for ``%%{``
#: directives anywhere in the text.
_ENTITIES = (
    ("#", "#35;"),
    ('"', "#quot;"),
    ("&", "#amp;"),
    ("<", "#lt;"),
    (">", "#gt;"),
    ("`", "#96;"),
    ("|", "#124;"),
    ("%", "#37;"),
)


def text(label: object) -> str:
    """A label as a quoted Mermaid string, safe whatever it holds."""
    out = one_line(label)
    for char, code in _ENTITIES:
        out = out.replace(char, code)
    return f'"{out}"'


def _node(node: GraphNode) -> str:
    opening, closing = SHAPES.get(node.kind, SHAPES["step"])
    return f"{node.id}{opening}{text(node.label)}{closing}"


def _edge(edge: GraphEdge) -> str:
    arrow = "-.->" if edge.style == "compensation" else "-->"
    label = f"|{text(edge.label)}|" if edge.label else ""
    return f"{edge.source} {arrow}{label} {edge.target}"


def to_mermaid(graph: Graph) -> str:
    """The graph as Mermaid flowchart source (paste it into any Mermaid viewer)."""
    lines = [_node(node) for node in graph.nodes]
    lines += [_edge(edge) for edge in graph.edges]
    classes: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.status is not None:
            classes.setdefault(node.status, []).append(node.id)
    for status, ids in classes.items():
        colour = colour_of(status)
        paint = f"fill:{colour.fill},stroke:{colour.stroke},color:{colour.text}"
        lines.append(f"classDef status_{status} {paint}")
        lines.append(f"class {','.join(ids)} status_{status}")
    compensations = [i for i, e in enumerate(graph.edges) if e.style == "compensation"]
    if compensations:
        numbers = ",".join(str(i) for i in compensations)
        lines.append(f"linkStyle {numbers} stroke:{COMPENSATION_EDGE}")
    return "flowchart TD\n" + "\n".join(f"    {line}" for line in lines) + "\n"
