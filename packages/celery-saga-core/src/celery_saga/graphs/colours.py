"""The one colour table: step and saga statuses and attempt outcomes, for every renderer.

Mermaid, DOT, the graph SVG and the timeline SVG all colour by looking a status up
here, so a COMPENSATED step is the same colour in a terminal, a notebook and the
web view. A status no entry names (or none: a definition) gets `NEUTRAL`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Colour:
    """How a node or bar of one status is painted: fill, outline and text colours."""

    fill: str
    stroke: str
    text: str = "#1f2328"


#: A node with no status (a definition graph) or one the table does not name.
NEUTRAL = Colour("#f6f8fa", "#57606a")

#: Step statuses (`StepStatus` values), saga statuses (`SagaStatus` values; "failed" and
#: "pending"... are shared) and the outcomes of attempts in a timeline.
COLOURS: dict[str, Colour] = {
    # step and saga statuses
    "pending": Colour("#eaeef2", "#8c959f"),
    "running": Colour("#ddf4ff", "#0969da"),
    "success": Colour("#dafbe1", "#1a7f37"),
    "completed": Colour("#dafbe1", "#1a7f37"),
    "failed": Colour("#ffebe9", "#cf222e"),
    "compensating": Colour("#fff8c5", "#9a6700"),
    "compensated": Colour("#fbefff", "#8250df"),
    "compensation_failed": Colour("#ffd8d3", "#a40e26"),
    "skipped": Colour("#f6f8fa", "#afb8c1", "#57606a"),
    "cancelled": Colour("#eaeef2", "#57606a"),
    "reverted": Colour("#fbefff", "#8250df"),
    # attempt outcomes (timeline bars and history entries)
    "retried": Colour("#fff1e5", "#bc4c00"),
    "taken_over": Colour("#fff1e5", "#953800"),
    "late_success": Colour("#dafbe1", "#4b8b5b"),
}

#: The outline of compensation edges (dashed, pointing back up the plan).
COMPENSATION_EDGE = "#8250df"
#: The outline of forward and condition edges.
FORWARD_EDGE = "#57606a"


def colour_of(status: str | None) -> Colour:
    """The colour of `status` (a step or saga status value, or an outcome); NEUTRAL if none."""
    if status is None:
        return NEUTRAL
    return COLOURS.get(status, NEUTRAL)
