"""The SVG pictures of a page, drawn by core's renderers (`celery_saga.graphs`,
`celery_saga.timeline`): a step graph, a definition graph, a timeline.

A renderer that fails on some record shows as a short note in place of its picture;
the rest of the page is still served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from celery_saga.models import SagaExecution

logger = logging.getLogger("celery_saga_web")


@dataclass(frozen=True)
class Picture:
    """An SVG to insert as markup, or why there is none."""

    svg: Markup | None = None
    problem: str | None = None


def _draw(what: str, make: Callable[[], str]) -> Picture:
    try:
        return Picture(svg=Markup(make()))  # core's renderers escape what they draw
    except Exception as exc:  # a picture must not take the page down
        logger.exception("celery-saga-web: cannot draw the %s", what)
        return Picture(problem=f"the {what} cannot be drawn ({type(exc).__name__}: {exc})")


def execution_graph_svg(execution: SagaExecution) -> Picture:
    """The execution's step graph, coloured by step status."""
    from celery_saga.graphs import execution_graph, to_svg

    return _draw("step graph", lambda: to_svg(execution_graph(execution)))


def timeline_svg(execution: SagaExecution) -> Picture:
    """Every attempt and compensation of the execution on a time axis."""
    from celery_saga.timeline import render_svg

    return _draw("timeline", lambda: render_svg(execution))


def definition_graph_svg(saga: Any) -> Picture:
    """A registered saga's definition graph (stages, parallel groups, compensations)."""
    from celery_saga.graphs import definition_graph, to_svg

    return _draw("definition graph", lambda: to_svg(definition_graph(saga)))
