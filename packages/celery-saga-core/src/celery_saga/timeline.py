"""An execution's timeline: every attempt and compensation as a bar, as text or SVG.

`bars` reads the stored records only: each step's current forward attempt and its
compensation, plus the attempts kept in ``history`` (retried, taken over, failed
compensations). `render_text` is the text Gantt of ``celery saga show --timeline``;
`render_svg` is the picture the web view shows. Times are UTC.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery_saga.graphs.colours import colour_of
from celery_saga.graphs.escape import one_line, shorten, xml_attr, xml_text
from celery_saga.models import SagaExecution, StepRecord, StepStatus
from celery_saga.views import iso

#: The two parts of a step a bar can show.
PARTS = ("forward", "compensation")

_FORWARD_OUTCOMES = {
    StepStatus.PENDING: "pending",
    StepStatus.RUNNING: "running",
    StepStatus.SUCCESS: "success",
    StepStatus.FAILED: "failed",
    StepStatus.SKIPPED: "skipped",
}
_COMPENSATION_OUTCOMES = {
    StepStatus.COMPENSATING: "running",
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATION_FAILED: "failed",
}


@dataclass(frozen=True)
class Bar:
    """One attempt of a step (``part="forward"``) or of its compensation.

    `finished_at` is None while it runs; `outcome` is how it ended ("success",
    "failed", "retried", "taken_over", "late_success", "compensated") or "running"
    / "pending".
    """

    step: int
    task_name: str
    part: str
    attempt: int
    started_at: float | None
    finished_at: float | None
    worker: str | None
    outcome: str
    error: str | None = None
    stage: int = 0

    @property
    def running(self) -> bool:
        """True while the attempt runs (or waits to): its bar reaches the present."""
        return self.finished_at is None and self.outcome in ("running", "pending")

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (None while it runs or if either is unknown)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def as_dict(self, *, iso_times: bool = True) -> dict[str, Any]:
        """The bar as JSON-able data (timestamps as ISO 8601 UTC unless told otherwise)."""
        return {
            "step_index": self.step,
            "task_name": self.task_name,
            "part": self.part,
            "attempt": self.attempt,
            "started_at": iso(self.started_at) if iso_times else self.started_at,
            "finished_at": iso(self.finished_at) if iso_times else self.finished_at,
            "duration": self.duration,
            "worker": self.worker,
            "outcome": self.outcome,
            "error": self.error,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _history(record: StepRecord) -> list[Bar]:
    out = []
    for entry in record.history or []:
        part = entry.get("part") if entry.get("part") in PARTS else "forward"
        name = record.task_name
        if part == "compensation":
            name = record.compensation_task_name or record.task_name
        attempt = entry.get("attempt")
        error = entry.get("error")
        worker = entry.get("worker")
        out.append(
            Bar(
                step=record.index,
                task_name=name,
                part=str(part),
                attempt=attempt if isinstance(attempt, int) else 0,
                started_at=_number(entry.get("started_at")),
                finished_at=_number(entry.get("finished_at")),
                worker=None if worker is None else str(worker),
                outcome=str(entry.get("outcome") or "failed"),
                error=None if error is None else str(error),
                stage=record.stage,
            )
        )
    return out


def _forward(record: StepRecord) -> Bar | None:
    if record.attempt <= 0 and record.started_at is None:
        return None  # never sent: nothing ran
    outcome = _FORWARD_OUTCOMES.get(record.status)
    if outcome is None:  # compensating or compensated: how did the forward part end?
        outcome = "failed" if record.error else "success"
    return Bar(
        step=record.index,
        task_name=record.task_name,
        part="forward",
        attempt=record.attempt,
        started_at=record.started_at,
        finished_at=record.finished_at,
        worker=record.worker,
        outcome=outcome,
        error=record.error,
        stage=record.stage,
    )


def _compensation(record: StepRecord) -> Bar | None:
    if record.comp_attempt <= 0 and record.comp_started_at is None:
        return None
    return Bar(
        step=record.index,
        task_name=record.compensation_task_name or record.task_name,
        part="compensation",
        attempt=record.comp_attempt,
        started_at=record.comp_started_at,
        finished_at=record.comp_finished_at,
        worker=record.comp_worker,
        outcome=_COMPENSATION_OUTCOMES.get(record.status, record.status.value),
        error=record.comp_error,
        stage=record.stage,
    )


def _order(bar: Bar) -> tuple[float, int, int, int]:
    start = bar.started_at if bar.started_at is not None else bar.finished_at
    return (math.inf if start is None else start, PARTS.index(bar.part), bar.step, bar.attempt)


def bars(execution: SagaExecution) -> list[Bar]:
    """Every attempt and compensation of the execution, in the order they started."""
    out: list[Bar] = []
    for record in execution.steps:
        out += _history(record)
        out += [bar for bar in (_forward(record), _compensation(record)) if bar is not None]
    return sorted(out, key=_order)


def compensation_order(found: list[Bar]) -> dict[int, int]:
    """Step index -> 1, 2, ...: the order in which the steps' compensations began."""
    order: dict[int, int] = {}
    for bar in sorted((b for b in found if b.part == "compensation"), key=_order):
        order.setdefault(bar.step, len(order) + 1)
    return order


# -- text ---------------------------------------------------------------------------------


def _clock(ts: float | None) -> str:
    """Time of day in UTC with milliseconds."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.3f}s"
    return f"{seconds / 60:.1f}min"


def _end(bar: Bar, now: float) -> float | None:
    """Where a bar ends: its finish, `now` while it runs, None if unknown (taken over)."""
    if bar.finished_at is not None:
        return bar.finished_at
    return now if bar.running and bar.started_at is not None else None


def _span(found: list[Bar], now: float) -> tuple[float, float]:
    starts = [b.started_at for b in found if b.started_at is not None]
    ends = [e for e in (_end(b, now) for b in found) if e is not None]
    start = min(starts, default=now)
    return start, max([start, *starts, *ends])


def _part(bar: Bar, order: dict[int, int]) -> str:
    return "forward" if bar.part == "forward" else f"undo #{order.get(bar.step, 0)}"


def render_text(execution: SagaExecution, width: int = 40, now: float | None = None) -> str:
    """The text Gantt: one line per attempt, by start, with a bar scaled to `width`.

    Columns: step, part ("forward", or "undo #N": the Nth step to be compensated),
    attempt, start and end (time of day, UTC, ms), duration, worker, outcome, the
    bar, and the error if any. A running attempt's bar reaches `now` and ends in ``>``.
    """
    now = time.time() if now is None else now
    width = max(int(width), 10)
    found = bars(execution)
    head = f"saga {execution.saga_name} {execution.saga_id} {execution.status.value.upper()}"
    if not found:
        return f"{head}\n  no attempt has started yet\n"
    start, end = _span(found, now)
    day = datetime.fromtimestamp(start, tz=timezone.utc).strftime("%Y-%m-%d")
    lines = [
        head,
        f"{len(found)} attempts, {day} {_clock(start)} to {_clock(end)} UTC "
        f"({_took(end - start)}); one column is {_took((end - start) / width)}",
        f"{'STEP':<28} {'PART':<8} {'TRY':>3}  {'START':<12} {'END':<12} {'TOOK':>9}  "
        f"{'WORKER':<22} {'OUTCOME':<12} {'':<{width + 2}}",
    ]
    order = compensation_order(found)
    scale = width / (end - start) if end > start else 0.0
    for bar in found:
        step = shorten(one_line(f"[{bar.step}] {bar.task_name}"), 28)
        finish = _end(bar, now)
        chart = " " * width
        if bar.started_at is not None:
            left = min(int((bar.started_at - start) * scale), width - 1)
            right = left + 1
            if finish is not None:
                right = max(right, min(math.ceil((finish - start) * scale), width))
            fill = ("#" if bar.part == "forward" else "~") * (right - left)
            if bar.running:
                fill = fill[:-1] + ">"
            elif finish is None:  # it was given up: when it ended is not known
                fill = fill[:-1] + "?"
            chart = " " * left + fill + " " * (width - right)
        live = bar.running and bar.started_at is not None
        end_text = "running" if live else _clock(bar.finished_at)
        took = now - bar.started_at if live and bar.started_at is not None else bar.duration
        worker = shorten(one_line(bar.worker or "-"), 22)
        error = f"  {shorten(one_line(bar.error), 100)}" if bar.error else ""
        lines.append(
            f"{step:<28} {_part(bar, order):<8} {bar.attempt:>3}  {_clock(bar.started_at):<12} "
            f"{end_text:<12} {_took(took):>9}  {worker:<22} {bar.outcome:<12} |{chart}|{error}"
        )
    return "\n".join(line.rstrip() for line in lines) + "\n"


# -- SVG ----------------------------------------------------------------------------------

_LABEL_WIDTH = 300
_CHART_WIDTH = 560
_ROW = 22
_TOP = 52
_MARGIN = 16
_FONT = "ui-sans-serif, system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"


def _tick_step(span: float) -> float:
    """A round tick interval (1, 2 or 5 times a power of ten) giving at most 8 ticks."""
    if span <= 0:
        return 1.0
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _bar_colour(bar: Bar) -> str:
    if bar.part == "compensation" and bar.outcome == "running":
        return "compensating"
    return bar.outcome


def _tooltip(bar: Bar, order: dict[int, int], now: float) -> str:
    live = bar.running and bar.started_at is not None
    took = (now - bar.started_at) if live and bar.started_at is not None else bar.duration
    rows = [
        f"step {bar.step} {bar.task_name}",
        f"part: {_part(bar, order)}",
        f"attempt: {bar.attempt}",
        f"outcome: {bar.outcome}",
        f"started: {iso(bar.started_at) or '-'}",
        f"finished: {iso(bar.finished_at) or ('running' if live else 'not known')}",
        f"took: {_took(took)}",
        f"worker: {bar.worker or '-'}",
    ]
    if bar.error:
        rows.append(f"error: {bar.error}")
    return "\n".join(rows)


def render_svg(execution: SagaExecution, now: float | None = None) -> str:
    """The timeline as a standalone SVG (also fit to put inline): a row per attempt.

    Each bar has a ``<title>`` (step, part, attempt, outcome, times, worker, error)
    and ``data-step`` / ``data-part`` / ``data-outcome`` attributes; every text is escaped.
    """
    now = time.time() if now is None else now
    found = bars(execution)
    order = compensation_order(found)
    start, end = _span(found, now)
    span = end - start
    width = _MARGIN * 2 + _LABEL_WIDTH + _CHART_WIDTH + 32  # room for the last tick's text
    height = _TOP + max(len(found), 1) * _ROW + _MARGIN
    status = execution.status.value.upper()
    title = f"timeline of saga {execution.saga_name} {execution.saga_id} ({status})"
    x0 = _MARGIN + _LABEL_WIDTH
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="saga-timeline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label={xml_attr(title)} font-family="{_FONT}" font-size="11">',
        f"<title>{xml_text(title)}</title>",
        f'<text x="{_MARGIN}" y="{_MARGIN + 4}" font-size="13" font-weight="600" '
        f'fill="#1f2328">{xml_text(shorten(one_line(title), 110))}</text>',
        f'<text x="{_MARGIN}" y="{_MARGIN + 20}" fill="#57606a">'
        f"{xml_text(f'from {iso(start)}' if found else 'no attempt has started yet')}</text>",
    ]
    if span > 0:
        tick = _tick_step(span)
        count = int(span / tick) + 1
        for i in range(count):
            x = x0 + i * tick / span * _CHART_WIDTH
            parts.append(
                f'<line x1="{x:.1f}" y1="{_TOP - 8}" x2="{x:.1f}" y2="{height - _MARGIN}" '
                f'stroke="#d0d7de" stroke-width="1"/>'
                f'<text x="{x:.1f}" y="{_TOP - 12}" text-anchor="middle" fill="#57606a" '
                f'font-size="10">+{_took(i * tick)}</text>'
            )
    for row, bar in enumerate(found):
        y = _TOP + row * _ROW
        label = shorten(one_line(f"[{bar.step}] {bar.task_name}"), 30)
        part = _part(bar, order)
        parts.append(
            f'<text x="{_MARGIN}" y="{y + 15}" fill="#1f2328">{xml_text(label)}</text>'
            f'<text x="{x0 - 8}" y="{y + 15}" text-anchor="end" fill="#57606a">'
            f"{xml_text(f'{part} {bar.attempt}')}</text>"
        )
        if bar.started_at is None:
            continue
        finish = _end(bar, now)
        left = x0 + ((bar.started_at - start) / span * _CHART_WIDTH if span > 0 else 0)
        right = left + 6  # a given-up attempt: when it ended is not known
        if finish is not None:
            right = x0 + ((finish - start) / span * _CHART_WIDTH if span > 0 else _CHART_WIDTH)
        colour = colour_of(_bar_colour(bar))
        dash = ' stroke-dasharray="3 2"' if bar.part == "compensation" else ""
        parts.append(
            f'<g class="saga-bar saga-bar-{bar.part}" data-step="{bar.step}" '
            f'data-part="{bar.part}" data-attempt="{bar.attempt}" '
            f"data-outcome={xml_attr(bar.outcome)}><title>{xml_text(_tooltip(bar, order, now))}"
            f'</title><rect x="{left:.1f}" y="{y + 4}" width="{max(right - left, 2):.1f}" '
            f'height="{_ROW - 8}" rx="3" fill="{colour.fill}" stroke="{colour.stroke}"{dash}/></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
