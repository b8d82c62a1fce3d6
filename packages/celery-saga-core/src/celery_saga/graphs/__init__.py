"""Pictures of sagas: a definition or an execution as a graph, in Mermaid, DOT or SVG.

``definition_graph(saga)`` and ``execution_graph(execution)`` make a `Graph`;
``to_mermaid``, ``to_dot`` and ``to_svg`` draw it. `Saga.to_mermaid()` /
`to_dot()` and `SagaResult.to_mermaid()` / `to_dot()` / `to_svg()` are the
shortcuts. Part of the definition layer: nothing here imports the runtime.
"""

from __future__ import annotations

from celery_saga.graphs.colours import COLOURS, NEUTRAL, Colour, colour_of
from celery_saga.graphs.dot import to_dot
from celery_saga.graphs.mermaid import to_mermaid
from celery_saga.graphs.model import (
    EDGE_STYLES,
    NODE_KINDS,
    Graph,
    GraphEdge,
    GraphNode,
    definition_graph,
    execution_graph,
)
from celery_saga.graphs.svg import to_svg

__all__ = [
    "COLOURS",
    "EDGE_STYLES",
    "NEUTRAL",
    "NODE_KINDS",
    "Colour",
    "Graph",
    "GraphEdge",
    "GraphNode",
    "colour_of",
    "definition_graph",
    "execution_graph",
    "to_dot",
    "to_mermaid",
    "to_svg",
]
