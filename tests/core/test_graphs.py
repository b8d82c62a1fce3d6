"""Graph exports checked against the definition: every step and edge, in every format.

The Mermaid source is read back by a strict parser of its structure (node declarations
and edges; any other line fails), the DOT source by Graphviz itself (``dot -Tsvg`` must
render it without a word on stderr, ``dot -Tjson`` gives its nodes and edges) and the
SVG by ``xml.etree``. Execution graphs come from sagas run on a real worker.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from seeing_app import composed, make_app
from support import IN_CI

from celery_saga import (
    Saga,
    SagaCompensated,
    SagaResult,
    StepStatus,
    external,
    parallelize,
    registry,
)
from celery_saga import saga as saga_fn
from celery_saga import step as step_fn
from celery_saga import when as when_fn
from celery_saga.graphs import (
    COLOURS,
    Graph,
    colour_of,
    definition_graph,
    execution_graph,
    to_dot,
    to_mermaid,
    to_svg,
)
from celery_saga.testing import make_execution

SVG = "{http://www.w3.org/2000/svg}"
Edge = tuple[str, str, str, str | None]

# -- readers of each format ---------------------------------------------------------------

_SHAPES = {
    '(["': ("start", '"])'),
    '[["': ("saga", '"]]'),
    '[/"': ("external", '"/]'),
    '["': ("step", '"]'),
    '("': ("transform", '")'),
    '{"': ("condition", '"}'),
}
_NODE = re.compile(r'^(\w+)(\(\["|\[\["|\[/"|\["|\("|\{")([^"]*)("\]\)|"\]\]|"/\]|"\]|"\)|"\})$')
_EDGE = re.compile(r'^(\w+) (-->|-\.->)(?:\|"([^"]*)"\|)? (\w+)$')
_OTHER = re.compile(
    r"^(classDef status_\w+ fill:#\w+,stroke:#\w+,color:#\w+|class [\w,]+ status_\w+|"
    r"linkStyle [\d,]+ stroke:#\w+)$"
)
_ENTITY = {"quot": '"', "amp": "&", "lt": "<", "gt": ">"}


def _decode(text: str) -> str:
    return re.sub(r"#(\w+);", lambda m: _ENTITY.get(m[1]) or chr(int(m[1])), text)


def parse_mermaid(source: str) -> tuple[dict[str, tuple[str, str]], set[Edge], dict[str, str]]:
    """(id -> (kind, label), edges, id -> status class) of a flowchart; any other line fails."""
    lines = source.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, tuple[str, str]] = {}
    edges: set[Edge] = set()
    classes: dict[str, str] = {}
    for line in lines[1:]:
        line = line.strip()
        if node := _NODE.match(line):
            kind, closing = _SHAPES[node[2]]
            assert node[4] == closing, line
            nodes[node[1]] = (kind, _decode(node[3]))
        elif edge := _EDGE.match(line):
            style = "compensation" if edge[2] == "-.->" else "forward"
            label = None if edge[3] is None else _decode(edge[3])
            edges.add((edge[1], edge[4], style, label))
        elif _OTHER.match(line):
            if line.startswith("class "):
                ids, status = line.split()[1:]
                classes.update(dict.fromkeys(ids.split(","), status.removeprefix("status_")))
        else:
            pytest.fail(f"not a line of the flowchart: {line!r}")
    return nodes, edges, classes


def need_dot() -> str:
    """The `dot` program: skipped with the reason when missing, except in CI."""
    found = shutil.which("dot")
    if found is None:
        if IN_CI:
            pytest.fail("Graphviz `dot` is not installed (CI=true: apt-get install graphviz)")
        pytest.skip("Graphviz `dot` is not installed (apt-get install graphviz)")
    return found


def render_dot(source: str, fmt: str) -> str:
    """`source` rendered by Graphviz; fails on any error or warning."""
    done = subprocess.run(
        [need_dot(), f"-T{fmt}"], input=source, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def parse_dot(source: str) -> tuple[dict[str, dict[str, Any]], set[Edge], list[list[str]]]:
    """(name -> node attributes, edges, rank=same groups) as Graphviz reads the DOT."""
    data = json.loads(render_dot(source, "json"))
    objects = data["objects"]
    nodes = {o["name"]: o for o in objects if "nodes" not in o}
    names = {o["_gvid"]: o["name"] for o in objects if "nodes" not in o}
    groups = [[names[i] for i in o["nodes"]] for o in objects if "nodes" in o]
    edges = set()
    for e in data["edges"]:
        style = "compensation" if e.get("style") == "dashed" else "forward"
        edges.add((names[e["tail"]], names[e["head"]], style, e.get("label") or None))
    return nodes, edges, groups


def parse_svg(source: str) -> tuple[ET.Element, dict[str, ET.Element], set[Edge]]:
    """(root, node id -> its <g>, edges with the class's style) of our SVG."""
    root = ET.fromstring(source)
    assert root.tag == f"{SVG}svg"
    nodes = {g.get("data-node", ""): g for g in root.iter(f"{SVG}g") if g.get("data-node")}
    edges: set[Edge] = set()
    for g in root.iter(f"{SVG}g"):
        if g.get("data-source"):
            style = (g.get("class") or "").split()[-1].removeprefix("saga-edge-")
            edges.add((g.get("data-source", ""), g.get("data-target", ""), style, None))
    return root, nodes, edges


def forward(edges: set[Edge]) -> set[Edge]:
    """The edges with condition edges counted as forward ones (formats draw them alike)."""
    return {(a, b, "forward" if s == "condition" else s, label) for a, b, s, label in edges}


def unlabelled(edges: set[Edge]) -> set[Edge]:
    return {(a, b, s, None) for a, b, s, _ in edges}


# -- the definition -----------------------------------------------------------------------

P = "gr"
APP = Celery("graphs", broker="memory://", set_as_current=False)
PARENT, CHILD = composed(APP, P)

NODES = {
    "start": ("start", f"{P}.composed"),
    "s0": ("step", f"{P}.reserve"),
    "t1": ("transform", "transform: tidy"),
    "c2": ("condition", "when big?"),
    "s1": ("step", f"{P}.charge"),
    "s2": ("saga", f"saga: {P}.payment"),
    "s3": ("external", "external: approve (timeout 300 s)"),
    "s4": ("step", f"{P}.ship"),
    "done": ("end", "done"),
}
EDGES: set[Edge] = {
    ("start", "s0", "forward", None),
    ("s0", "start", "compensation", f"undo: {P}.release"),
    ("s0", "t1", "forward", None),
    ("t1", "c2", "forward", None),
    ("c2", "s1", "condition", "yes"),
    ("c2", "s2", "condition", "yes"),
    ("s1", "s0", "compensation", f"undo: {P}.refund"),
    ("s2", "s0", "compensation", f"revert: {P}.payment"),
    ("s1", "s3", "forward", None),
    ("s2", "s3", "forward", None),
    ("c2", "s3", "condition", "no"),
    ("s3", "s1", "compensation", f"undo: {P}.disapprove"),  # to the stage's first node
    ("s3", "s4", "forward", None),
    ("s4", "done", "forward", None),
}


def test_the_definition_graph_has_every_node_and_edge_of_the_plan() -> None:
    graph = definition_graph(PARENT)
    assert {n.id: (n.kind, n.label) for n in graph.nodes} == NODES
    assert {(e.source, e.target, e.style, e.label) for e in graph.edges} == EDGES
    steps = {n.id: (n.index, n.stage, n.compensate) for n in graph.nodes if n.index is not None}
    assert steps == {
        "s0": (0, 0, f"{P}.release"),
        "s1": (1, 1, f"{P}.refund"),
        "s2": (2, 1, f"{P}.payment"),
        "s3": (3, 2, f"{P}.disapprove"),
        "s4": (4, 3, None),
    }
    # The steps are the definition's, index for index.
    assert [(s.index, s.stage) for s in PARENT.definition.steps] == [
        (v[0], v[1]) for v in steps.values()
    ]
    assert definition_graph(PARENT.definition) == graph  # from the compiled definition too
    assert graph.node("s3").details == (
        ("task", "approve"),
        ("compensation", f"{P}.disapprove"),
        ("timeout", "300 s"),
    )
    assert all(n.status is None for n in graph.nodes)


def test_mermaid_read_back_gives_the_same_graph() -> None:
    source = PARENT.to_mermaid()
    assert PARENT.mermaid() == source  # the first name stays
    nodes, edges, classes = parse_mermaid(source)
    expected = {i: (("start" if k == "end" else k), label) for i, (k, label) in NODES.items()}
    assert nodes == expected  # start and end share the stadium shape
    assert edges == forward(EDGES)
    assert classes == {}  # a definition has no status
    assert "linkStyle" in source  # compensation edges get their colour


def test_dot_renders_with_graphviz_and_reads_back_as_the_same_graph() -> None:
    source = PARENT.to_dot()
    svg = render_dot(source, "svg")
    ET.fromstring(svg)  # Graphviz's SVG is well formed
    nodes, edges, groups = parse_dot(source)
    assert {name: node["label"] for name, node in nodes.items()} == {
        i: label for i, (_, label) in NODES.items()
    }
    shapes = {name: node["shape"] for name, node in nodes.items()}
    assert (shapes["c2"], shapes["s3"], shapes["s0"]) == ("diamond", "parallelogram", "box")
    assert nodes["s2"]["peripheries"] == "2" and "dashed" in nodes["t1"]["style"]
    assert edges == forward(EDGES)
    assert groups == [["s1", "s2"]]  # the parallel members share a rank: side by side
    assert "300 s" in nodes["s3"]["tooltip"]


def test_svg_has_a_row_per_stage_and_every_edge() -> None:
    source = to_svg(definition_graph(PARENT))
    root, nodes, edges = parse_svg(source)
    assert root.get("viewBox") and root.find(f"{SVG}title") is not None
    assert set(nodes) == set(NODES)
    assert edges == unlabelled(EDGES)
    steps = {g.get("data-node"): g.get("data-step") for g in nodes.values() if g.get("data-step")}
    assert steps == {"s0": "0", "s1": "1", "s2": "2", "s3": "3", "s4": "4"}

    def row(node: str) -> float:
        shape = next(c for c in nodes[node] if c.tag != f"{SVG}title")
        if shape.tag == f"{SVG}rect":
            return float(shape.get("y", 0)) + float(shape.get("height", 0)) / 2
        ys = [float(p.split(",")[1]) for p in (shape.get("points") or "").split()]
        return (min(ys) + max(ys)) / 2

    order = ["start", "s0", "t1", "c2", "s1", "s3", "s4", "done"]
    assert [row(a) < row(b) for a, b in itertools.pairwise(order)] == [True] * 7  # top to bottom
    assert row("s1") == row("s2")  # parallel members side by side

    def left(node: str) -> float:
        return float(next(c for c in nodes[node] if c.tag == f"{SVG}rect").get("x", 0))

    assert left("s1") < left("s2")
    for g in nodes.values():
        assert g.find(f"{SVG}title") is not None and g.find(f"{SVG}text") is not None
    assert "timeout: 300 s" in (nodes["s3"].findtext(f"{SVG}title") or "")


def test_a_functional_saga_exports_like_a_builder_one() -> None:
    child = Saga(f"{P}.fchild", app=APP).add_step(f"{P}.charge2")

    @saga_fn(f"{P}.functional", app=APP)
    def functional(input: Any) -> Any:
        first = step_fn(f"{P}.reserve", input, compensate=f"{P}.release")
        made = step_fn(child, first)
        paid = external("pay", timeout=60)
        x, y = when_fn(parallelize(step_fn(f"{P}.a", made), step_fn(f"{P}.b", paid)), big_one)
        return {"x": x, "y": y}

    nodes, edges, _ = parse_mermaid(functional.to_mermaid())
    assert nodes == {
        "start": ("start", f"{P}.functional"),
        "s0": ("step", f"{P}.reserve"),
        "s1": ("saga", f"saga: {P}.fchild"),
        "s2": ("external", "external: pay (timeout 60 s)"),
        "c1": ("condition", "when big_one?"),
        "s3": ("step", f"{P}.a"),
        "s4": ("step", f"{P}.b"),
        "done": ("start", "done"),
    }
    assert ("c1", "s3", "forward", "yes") in edges and ("c1", "done", "forward", "no") in edges
    assert ("s1", "s0", "compensation", f"revert: {P}.fchild") in edges
    dot_nodes, dot_edges, _ = parse_dot(functional.to_dot())
    assert set(dot_nodes) == set(nodes) and dot_edges == edges


def big_one(context: dict[str, Any]) -> bool:
    return True


# -- hostile labels -----------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script> & \'q\' "dq" #35; | `b` %%{init: {}}%% \\ end\nline2\x00\x1b'
SHOWN = (
    '<script>alert("x")</script> & \'q\' "dq" #35; | `b` %%{init: {}}%% \\ end line2\ufffd\ufffd'
)


def hostile_graph() -> Graph:
    s = Saga(HOSTILE, app=APP).add_step(HOSTILE, compensate=HOSTILE).add_step(f"{P}.ok")
    return definition_graph(s)


def test_hostile_labels_stay_text_in_mermaid() -> None:
    source = to_mermaid(hostile_graph())
    nodes, edges, _ = parse_mermaid(source)  # one line per node and edge: nothing broke out
    assert nodes["start"] == ("start", SHOWN) and nodes["s0"] == ("step", SHOWN)
    assert ("s0", "start", "compensation", f"undo: {SHOWN}") in edges
    assert "<" not in source and "%%" not in source and "\x00" not in source


def test_hostile_labels_stay_text_in_dot() -> None:
    source = to_dot(hostile_graph())
    nodes, edges, _ = parse_dot(source)
    assert set(nodes) == {"start", "s0", "s1", "done"}
    assert ("s0", "start", "compensation") in {e[:3] for e in edges}
    svg = ET.fromstring(render_dot(source, "svg"))  # Graphviz's own SVG stays well formed
    assert not [e for e in svg.iter() if e.tag.endswith("script")]
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert texts.count(SHOWN) == 2  # the saga's name and the step, shown as written
    assert f"undo: {SHOWN}" in texts


def test_hostile_labels_stay_text_in_svg() -> None:
    source = to_svg(hostile_graph())
    root, nodes, _ = parse_svg(source)
    assert not [e for e in root.iter() if e.tag.endswith("script")]
    assert all(e.tag.startswith(SVG) for e in root.iter())  # no foreign element got in
    title = (nodes["s0"].findtext(f"{SVG}title") or "").split("\n")
    assert title[0] == SHOWN  # the tooltip: the label on one line, then the details
    assert "compensation: " + HOSTILE.replace("\x00", "\ufffd").replace("\x1b", "\ufffd") in (
        "\n".join(title)
    )
    assert "\x00" not in source and "<script" not in source
    assert next(t.text for t in nodes["s0"].iter(f"{SVG}text")).startswith("<script>alert(")


# -- executions on a real worker -----------------------------------------------------------


@pytest.fixture
def seeing() -> tuple[Celery, dict[str, Saga]]:
    return make_app(f"graphs{uuid.uuid4().hex[:6]}")


@pytest.fixture
def saga_app(seeing: tuple[Celery, dict[str, Saga]]) -> Celery:
    return seeing[0]


def _statuses(graph: Graph) -> dict[str, str | None]:
    return {n.id: n.status for n in graph.nodes}


def test_execution_graphs_are_coloured_by_step_status(
    seeing: tuple[Celery, dict[str, Saga]], saga_worker: Any
) -> None:
    order = seeing[1]["order"]
    done = order.run(order_id="A-1", amount=10)
    done.get(timeout=30)
    undone = order.run(order_id="A-2", amount=10, fail=True)
    with pytest.raises(SagaCompensated):
        undone.get(timeout=30)

    registry.unregister(order.name)  # the graph needs the stored records only
    fresh = SagaResult(undone.saga_id, done.backend)
    completed, compensated = execution_graph(done.execution), execution_graph(fresh.execution)
    assert _statuses(completed) == {
        "start": "completed",
        "s0": "success",
        "s1": "success",
        "s2": "success",
        "s3": "success",
        "done": "completed",
    }
    assert _statuses(compensated) == {
        "start": "compensated",
        "s0": "compensated",
        "s1": "compensated",
        "s2": "compensated",
        "s3": "failed",
        "done": None,
    }
    name = order.name
    assert {(e.source, e.target, e.style) for e in compensated.edges} == {
        ("start", "s0", "forward"),
        ("s0", "start", "compensation"),
        ("s0", "s1", "forward"),
        ("s0", "s2", "forward"),
        ("s1", "s0", "compensation"),
        ("s2", "s0", "compensation"),
        ("s1", "s3", "forward"),
        ("s2", "s3", "forward"),
        ("s3", "done", "forward"),
    }
    assert compensated.node("s1").compensate == f"{name.rsplit('.', 1)[0]}.refund"

    # Mermaid: each node in the class of its status, with that status's colours.
    _, _, classes = parse_mermaid(fresh.to_mermaid())
    assert classes == {k: v for k, v in _statuses(compensated).items() if v}
    for status in ("compensated", "failed"):
        colour = COLOURS[status]
        assert f"status_{status} fill:{colour.fill},stroke:{colour.stroke}" in fresh.to_mermaid()

    # DOT: fill colours from the one table.
    nodes, _, _ = parse_dot(fresh.to_dot())
    for node_id, status in _statuses(compensated).items():
        assert nodes[node_id]["fillcolor"] == colour_of(status).fill
    assert "status: compensated" in nodes["s0"]["tooltip"]

    # SVG: the shape of each step is painted in its status's colours; titles give details.
    for result, graph in ((done, completed), (fresh, compensated)):
        _, svg_nodes, _ = parse_svg(result.to_svg())
        for node_id, status in _statuses(graph).items():
            g = svg_nodes[node_id]
            shape = next(c for c in g if c.tag in (f"{SVG}rect", f"{SVG}polygon"))
            assert shape.get("fill") == colour_of(status).fill
            if graph.node(node_id).index is not None:
                assert g.get("data-status") == status
                title = g.findtext(f"{SVG}title") or ""
                assert f"status: {status}" in title and "attempt: " in title
                assert "started: 20" in title and title.count("Z") >= 2  # ISO times, UTC


def test_graphs_never_import_the_runtime() -> None:
    """The definition layer (graphs among it) is importable without the runtime."""
    root = Path(__import__("celery_saga").__file__).parent
    start = ["graphs/__init__.py", "builder.py", "timeline.py", "views.py", "outline.py"]
    seen: set[str] = set()
    todo = [root / p for p in start]
    while todo:
        path = todo.pop()
        if str(path) in seen or not path.exists():
            continue
        seen.add(str(path))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if not name.startswith("celery_saga.") or name.startswith("celery_saga.runtime"):
                    assert not name.startswith("celery_saga.runtime"), f"{path} imports {name}"
                    continue
                rel = Path(*name.split(".")[1:])
                todo += [root / rel.with_suffix(".py"), root / rel / "__init__.py"]
    assert any(p.endswith("graphs/model.py") for p in seen)


def test_a_graph_of_an_execution_shows_conditions_as_skipped_steps() -> None:
    execution = make_execution(steps=2, name="skips")
    execution.steps[1].status = StepStatus.SKIPPED
    graph = execution_graph(execution)
    assert graph.node("s1").status == "skipped"
    assert graph.node("s1").label == "tasks.step1"
    assert graph.title == f"saga skips {execution.saga_id} (RUNNING)"
