"""A `Graph` as a standalone SVG, drawn here with no dependency: one row per stage.

The layout is layered: a node's row is the longest forward path from the start
(compensation edges do not count), so stages go top to bottom, a condition sits
above the node it guards, and parallel members share a row, side by side. Forward
edges go down; an edge that skips rows (a condition's "no") runs down the right
side; compensation edges are dashed curves back up on the left. Every text is
escaped; each node has a ``<title>`` (its details: the browser's tooltip) and, for
a step, ``data-step`` with its index. Colours are attributes, not a stylesheet, so
the SVG can be put inline in a page without styling anything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from celery_saga.graphs.colours import COMPENSATION_EDGE, FORWARD_EDGE, colour_of
from celery_saga.graphs.escape import one_line, shorten, xml_attr, xml_text
from celery_saga.graphs.model import Graph, GraphEdge, GraphNode

#: Layout constants, in pixels.
MARGIN = 24
NODE_HEIGHT = 36
#: A node that shows its compensation on a second line.
TALL_HEIGHT = 48
ROW_GAP = 44
NODE_GAP = 28
MIN_WIDTH = 96
MAX_WIDTH = 240
CHAR_WIDTH = 7.0
SMALL_CHAR_WIDTH = 6.0
#: Room on the left for compensation curves and on the right for edges that skip rows.
LEFT_LANE = 90
RIGHT_LANE = 48
FONT = "ui-sans-serif, system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class Box:
    """Where a node is drawn: its centre, width and height, and its row."""

    x: float
    y: float
    width: float
    height: float
    row: int

    @property
    def left(self) -> float:
        return self.x - self.width / 2

    @property
    def right(self) -> float:
        return self.x + self.width / 2

    @property
    def top(self) -> float:
        return self.y - self.height / 2

    @property
    def bottom(self) -> float:
        return self.y + self.height / 2


def rows(graph: Graph) -> list[list[GraphNode]]:
    """The nodes by row: each node one row below the lowest of its forward predecessors."""
    flow = [e for e in graph.edges if e.style != "compensation"]
    incoming: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for edge in flow:
        if edge.target in incoming and edge.source in incoming:
            incoming[edge.target].append(edge.source)
    row: dict[str, int] = {}
    visiting: set[str] = set()

    def place(node_id: str) -> int:
        if node_id in row:
            return row[node_id]
        if node_id in visiting:  # a cycle (no saga makes one): break it here
            return 0
        visiting.add(node_id)
        row[node_id] = max((place(p) + 1 for p in incoming[node_id]), default=0)
        visiting.discard(node_id)
        return row[node_id]

    for node in graph.nodes:
        place(node.id)
    out: list[list[GraphNode]] = [[] for _ in range(max(row.values(), default=-1) + 1)]
    for node in graph.nodes:
        out[row[node.id]].append(node)
    return out


def _undo(node: GraphNode) -> str | None:
    """The second line of a compensated step: what undoes it."""
    if node.compensate is None:
        return None
    return f"{'revert' if node.kind == 'saga' else 'undo'}: {node.compensate}"


def _padding(node: GraphNode) -> float:
    return 40 if node.kind in ("condition", "external", "saga") else 24


def node_width(node: GraphNode) -> float:
    """A node's width: its text's, within MIN_WIDTH and MAX_WIDTH."""
    text = len(one_line(node.label)) * CHAR_WIDTH
    undo = _undo(node)
    if undo is not None:
        text = max(text, len(one_line(undo)) * SMALL_CHAR_WIDTH)
    return max(MIN_WIDTH, min(MAX_WIDTH, text + _padding(node)))


def layout(graph: Graph) -> tuple[dict[str, Box], float, float]:
    """Each node's box, and the width and height of the drawing."""
    layered = rows(graph)
    widths = [sum(node_width(n) for n in r) + NODE_GAP * (len(r) - 1) for r in layered]
    inner = max(widths, default=MIN_WIDTH)
    title = min(len(one_line(graph.title)), 120) * 8.5  # bold text: wider than 7.5 px a character
    width = max(LEFT_LANE + inner + RIGHT_LANE, title) + 2 * MARGIN
    boxes: dict[str, Box] = {}
    for number, (members, row_width) in enumerate(zip(layered, widths)):
        x = MARGIN + LEFT_LANE + (inner - row_width) / 2
        y = MARGIN + 16 + number * (TALL_HEIGHT + ROW_GAP) + TALL_HEIGHT / 2
        for node in members:
            w = node_width(node)
            h = NODE_HEIGHT if _undo(node) is None else TALL_HEIGHT
            boxes[node.id] = Box(x + w / 2, y, w, h, number)
            x += w + NODE_GAP
    height = MARGIN * 2 + 16 + len(layered) * (TALL_HEIGHT + ROW_GAP) - ROW_GAP
    return boxes, width, height


def _id_prefix(graph: Graph) -> str:
    """Ids unique to this graph, so two SVGs inline in one page keep their own markers."""
    digest = hashlib.sha256(f"{graph.name}\0{graph.saga_id}".encode()).hexdigest()[:10]
    return f"saga-graph-{digest}"


def _shape(node: GraphNode, box: Box) -> str:
    colour = colour_of(node.status)
    paint = f'fill="{colour.fill}" stroke="{colour.stroke}" stroke-width="1.5"'
    left, right, top, bottom = box.left, box.right, box.top, box.bottom
    if node.kind == "condition":
        points = f"{box.x},{top - 4} {right},{box.y} {box.x},{bottom + 4} {left},{box.y}"
        return f'<polygon points="{points}" {paint}/>'
    if node.kind == "external":
        skew = 10
        points = f"{left + skew},{top} {right},{top} {right - skew},{bottom} {left},{bottom}"
        return f'<polygon points="{points}" {paint}/>'
    if node.kind == "saga":
        rect = f'<rect x="{left}" y="{top}" width="{box.width}" height="{box.height}" {paint}/>'
        bars = "".join(
            f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="{colour.stroke}"/>'
            for x in (left + 8, right - 8)
        )
        return rect + bars
    radius = box.height / 2 if node.kind in ("start", "end", "transform") else 6
    dash = ' stroke-dasharray="4 3"' if node.kind == "transform" else ""
    width = "2.5" if node.kind == "end" else "1.5"
    return (
        f'<rect x="{left}" y="{top}" width="{box.width}" height="{box.height}" rx="{radius}" '
        f'fill="{colour.fill}" stroke="{colour.stroke}" stroke-width="{width}"{dash}/>'
    )


def _node(node: GraphNode, box: Box) -> str:
    colour = colour_of(node.status)
    classes = f"saga-node saga-node-{node.kind}" + (
        f" saga-status-{node.status}" if node.status else ""
    )
    attrs = f'class="{classes}" data-node={xml_attr(node.id)}'
    if node.index is not None:
        attrs += f' data-step="{node.index}"'
    if node.status is not None:
        attrs += f" data-status={xml_attr(node.status)}"
    details = [f"{name}: {value}" for name, value in node.details]
    tooltip = "\n".join([one_line(node.label), *details])
    room = box.width - _padding(node) + 8
    label = shorten(one_line(node.label), max(int(room / CHAR_WIDTH), 4))
    undo = _undo(node)
    y = box.y + 4 if undo is None else box.y - 2
    text = (
        f'<text x="{box.x}" y="{y}" text-anchor="middle" fill="{colour.text}">'
        f"{xml_text(label)}</text>"
    )
    if undo is not None:
        small = shorten(one_line(undo), max(int(room / SMALL_CHAR_WIDTH), 4))
        text += (
            f'<text x="{box.x}" y="{y + 14}" text-anchor="middle" font-size="10" '
            f'fill="{COMPENSATION_EDGE}">{xml_text(small)}</text>'
        )
    return f"<g {attrs}><title>{xml_text(tooltip)}</title>{_shape(node, box)}{text}</g>"


def _label(x: float, y: float, text: str, colour: str, anchor: str = "middle") -> str:
    return (
        f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="10" fill="{colour}" '
        f'stroke="#ffffff" stroke-width="3" paint-order="stroke">{xml_text(text)}</text>'
    )


def _edge(edge: GraphEdge, boxes: dict[str, Box], prefix: str, number: int) -> str:
    a, b = boxes.get(edge.source), boxes.get(edge.target)
    if a is None or b is None:
        return ""
    label = shorten(one_line(edge.label), 28) if edge.label else ""
    attrs = f'class="saga-edge saga-edge-{edge.style}" data-source={xml_attr(edge.source)} '
    attrs += f"data-target={xml_attr(edge.target)}"
    if edge.style == "compensation":
        sx, sy = a.left + a.width * 0.25, a.top
        tx, ty = b.left + b.width * 0.25, b.bottom + 3
        bend = min(sx, tx) - 40 - 6 * (number % 4)
        path = f"M{sx},{sy} C{bend},{sy - 10} {bend},{ty + 10} {tx},{ty}"
        return (  # its label is on the node it starts from, as a second line
            f"<g {attrs}><title>{xml_text(edge.label or 'compensation')}</title>"
            f'<path d="{path}" fill="none" stroke="{COMPENSATION_EDGE}" stroke-width="1.2" '
            f'stroke-dasharray="5 4" marker-end="url(#{prefix}-comp)"/></g>'
        )
    if b.row - a.row > 1:  # it skips rows: down the right-hand side
        lane = max(box.right for box in boxes.values() if a.row <= box.row <= b.row) + 18
        path = f"M{a.right},{a.y} L{lane},{a.y} L{lane},{b.y} L{b.right + 3},{b.y}"
        text = _label(lane + 4, a.y - 4, label, FORWARD_EDGE, "start") if label else ""
    else:
        path = f"M{a.x},{a.bottom} L{b.x},{b.top - 3}"
        middle = (a.x + b.x) / 2 + 6, (a.bottom + b.top) / 2 + 3
        text = _label(*middle, label, FORWARD_EDGE, "start") if label else ""
    return (
        f'<g {attrs}><path d="{path}" fill="none" stroke="{FORWARD_EDGE}" stroke-width="1.2" '
        f'marker-end="url(#{prefix}-arrow)"/>{text}</g>'
    )


def _marker(ident: str, colour: str) -> str:
    return (
        f'<marker id="{ident}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{colour}"/></marker>'
    )


def to_svg(graph: Graph) -> str:
    """The graph as an SVG document (valid standalone, and fit to put inline in HTML)."""
    boxes, width, height = layout(graph)
    prefix = _id_prefix(graph)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="saga-graph" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label={xml_attr(graph.title)} font-family="{FONT}" font-size="12">',
        f"<title>{xml_text(graph.title)}</title>",
        f"<defs>{_marker(prefix + '-arrow', FORWARD_EDGE)}"
        f"{_marker(prefix + '-comp', COMPENSATION_EDGE)}</defs>",
        f'<text x="{MARGIN}" y="{MARGIN}" font-size="13" font-weight="600" fill="#1f2328">'
        f"{xml_text(shorten(one_line(graph.title), 120))}</text>",
        '<g class="saga-edges">',
    ]
    parts += [_edge(edge, boxes, prefix, i) for i, edge in enumerate(graph.edges)]
    parts.append('</g><g class="saga-nodes">')
    parts += [_node(node, boxes[node.id]) for node in graph.nodes]
    parts.append("</g></svg>")
    return "\n".join(part for part in parts if part) + "\n"
