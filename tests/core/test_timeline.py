"""The timeline: bars from the records and their history, as a text Gantt and as SVG.

The renderers are checked on a hand-made execution whose every time is known (retries,
an attempt taken over, a compensation that failed once, one still running), then on a
saga run on a real worker that retries a step and then compensates.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from celery import Celery
from seeing_app import make_app

from celery_saga import Saga, SagaCompensated, SagaStatus, StepStatus
from celery_saga.graphs import colour_of
from celery_saga.models import SagaExecution
from celery_saga.testing import make_execution
from celery_saga.timeline import Bar, bars, render_svg, render_text

SVG = "{http://www.w3.org/2000/svg}"
T = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def _history(
    part: str, attempt: int, start: float, end: float | None, **more: Any
) -> dict[str, Any]:
    return {
        "part": part,
        "attempt": attempt,
        "started_at": T + start,
        "finished_at": None if end is None else T + end,
        "worker": more.get("worker"),
        "outcome": more.get("outcome", "retried"),
        "error": more.get("error"),
    }


def made() -> SagaExecution:
    """Four steps over three stages: step 2 retried, taken over, then failed for good;
    steps 1 and 0 compensated in that order (step 1's first compensation failed)."""
    ex = make_execution(steps=4, stages=[0, 1, 1, 2], name="timeline")
    ex.status = SagaStatus.COMPENSATED
    s = ex.steps
    s[0].status, s[0].attempt, s[0].worker = StepStatus.COMPENSATED, 1, "celery@a"
    s[0].started_at, s[0].finished_at = T, T + 0.05
    s[0].compensation_task_name, s[0].comp_attempt, s[0].comp_worker = "tasks.undo0", 1, "celery@b"
    s[0].comp_started_at, s[0].comp_finished_at = T + 0.9, T + 0.95
    s[1].status, s[1].attempt, s[1].worker = StepStatus.COMPENSATED, 1, "celery@b"
    s[1].started_at, s[1].finished_at = T + 0.06, T + 0.3
    s[1].compensation_task_name, s[1].comp_attempt = "tasks.undo1", 2
    s[1].comp_started_at, s[1].comp_finished_at = T + 0.7, T + 0.8
    s[1].history = [
        _history("compensation", 1, 0.5, 0.6, outcome="failed", error="db down", worker="celery@a")
    ]
    s[2].status, s[2].attempt, s[2].error = StepStatus.FAILED, 3, "card <declined>\nfor good"
    s[2].started_at, s[2].finished_at, s[2].worker = T + 0.4, T + 0.45, "celery@c"
    s[2].history = [
        _history("forward", 1, 0.06, 0.1, worker="celery@a", error="timeout"),
        _history("forward", 2, 0.2, None, worker="celery@b", outcome="taken_over"),
    ]
    return ex


def test_bars_come_from_the_attempt_the_compensation_and_the_history_in_start_order() -> None:
    found = bars(made())
    assert [(b.step, b.part, b.attempt, b.outcome) for b in found] == [
        (0, "forward", 1, "success"),
        (1, "forward", 1, "success"),
        (2, "forward", 1, "retried"),
        (2, "forward", 2, "taken_over"),
        (2, "forward", 3, "failed"),
        (1, "compensation", 1, "failed"),
        (1, "compensation", 2, "compensated"),
        (0, "compensation", 1, "compensated"),
    ]
    first = found[0]
    assert first == Bar(0, "tasks.step0", "forward", 1, T, T + 0.05, "celery@a", "success", None, 0)
    assert first.duration == pytest.approx(0.05) and not first.running
    assert found[5].task_name == "tasks.undo1" and found[5].error == "db down"
    assert found[3].finished_at is None and found[3].duration is None and not found[3].running
    assert found[2].as_dict()["started_at"] == "2026-05-28T20:26:40.060000Z"
    assert found[2].as_dict(iso_times=False)["started_at"] == T + 0.06


def test_a_step_never_sent_has_no_bar_and_one_running_reaches_now() -> None:
    ex = make_execution(steps=2, name="running")
    ex.steps[0].status, ex.steps[0].attempt, ex.steps[0].started_at = StepStatus.RUNNING, 1, T
    (bar,) = bars(ex)
    assert bar.running and bar.outcome == "running"
    text = render_text(ex, width=20, now=T + 2)
    line = text.splitlines()[3]
    assert "running" in line and "2.000s" in line and line.endswith("#>|")
    assert "no attempt has started yet" in render_text(make_execution(steps=1))


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[")]


def test_the_text_gantt_has_a_line_per_attempt_with_times_workers_and_outcomes() -> None:
    text = render_text(made(), width=40)
    head = text.splitlines()
    assert head[0].startswith("saga timeline ") and head[0].endswith(" COMPENSATED")
    assert head[1].startswith("8 attempts, 2026-05-28 20:26:40.000 to 20:26:40.950 UTC (950ms)")
    rows = _rows(text)
    assert len(rows) == 8
    cells = [re.split(r"\s{2,}|\s(?=\|)", row) for row in rows]
    assert cells[2][:1] == ["[2] tasks.step2"]
    assert re.search(
        r"^\[2\] tasks\.step2\s+forward\s+1\s+20:26:40\.060 20:26:40\.100\s+40ms\s+celery@a\s+"
        r"retried\s+\|",
        rows[2],
    ), rows[2]
    assert rows[2].endswith("|  timeout")
    assert "taken_over" in rows[3] and rows[3].count("?") == 1  # its end is not known
    assert rows[4].endswith("|  card <declined> for good")  # one line per bar
    # Compensations come after the attempts they undo, numbered in the order they began.
    parts = [row.split()[2] + " " + row.split()[3] for row in rows]
    assert parts[5:] == ["undo #1", "undo #1", "undo #2"]
    assert [row.split()[1] for row in rows[5:]] == ["tasks.undo1", "tasks.undo1", "tasks.undo0"]
    # Each bar sits where its attempt ran, scaled to the width (here 950 ms in 40 columns).
    charts = [row[row.index("|") + 1 : row.index("|", row.index("|") + 1)] for row in rows]
    assert all(len(chart) == 40 for chart in charts)
    assert charts[0].startswith("#") and charts[-1].endswith("~")
    assert charts[-1].strip(" ") == "~~~"
    starts = [len(chart) - len(chart.lstrip()) for chart in charts]
    assert starts == sorted(starts)


def test_the_svg_timeline_has_a_bar_per_attempt_with_a_tooltip() -> None:
    ex = made()
    ex.steps[2].error = '<script>alert("x")</script>\x00'
    source = render_svg(ex)
    root = ET.fromstring(source)
    assert root.tag == f"{SVG}svg" and root.get("viewBox")
    assert "timeline of saga timeline" in (root.findtext(f"{SVG}title") or "")
    groups = [g for g in root.iter(f"{SVG}g") if "saga-bar" in (g.get("class") or "")]
    found = bars(ex)
    assert [(g.get("data-step"), g.get("data-part"), g.get("data-outcome")) for g in groups] == [
        (str(b.step), b.part, b.outcome) for b in found
    ]
    for g, bar in zip(groups, found):
        title = g.findtext(f"{SVG}title") or ""
        assert f"attempt: {bar.attempt}" in title and f"outcome: {bar.outcome}" in title
        rect = g.find(f"{SVG}rect")
        assert (
            rect is not None
            and rect.get("fill")
            == colour_of("compensating" if bar.outcome == "running" else bar.outcome).fill
        )
    failed = groups[4].findtext(f"{SVG}title") or ""
    assert 'error: <script>alert("x")</script>\ufffd' in failed
    assert "started: 2026-05-28T20:26:40.400000Z" in failed and "worker: celery@c" in failed
    assert not [e for e in root.iter() if e.tag.endswith("script")] and "<script" not in source
    # Bars go left to right with time.
    xs = [float(g.find(f"{SVG}rect").get("x", 0)) for g in groups]  # type: ignore[union-attr]
    assert xs == sorted(xs)


# -- on a real worker ---------------------------------------------------------------------


@pytest.fixture
def seeing() -> tuple[Celery, dict[str, Saga]]:
    return make_app(f"timeline{uuid.uuid4().hex[:6]}")


@pytest.fixture
def saga_app(seeing: tuple[Celery, dict[str, Saga]]) -> Celery:
    return seeing[0]


def test_a_retried_and_compensated_saga_on_a_worker(
    seeing: tuple[Celery, dict[str, Saga]], saga_worker: Any
) -> None:
    order = seeing[1]["order"]
    result = order.run(order_id=f"T-{uuid.uuid4().hex[:6]}", amount=5, flaky=True, fail=True)
    with pytest.raises(SagaCompensated):
        result.get(timeout=30)
    execution = result.execution
    assert execution is not None
    found = bars(execution)
    prefix = order.name.rsplit(".", 1)[0]
    forward = [(b.task_name, b.attempt, b.outcome) for b in found if b.part == "forward"]
    assert (f"{prefix}.charge", 1, "retried") in forward
    assert (f"{prefix}.charge", 2, "success") in forward
    assert forward[-1] == (f"{prefix}.ship", 1, "failed")
    undo = [(b.task_name, b.outcome) for b in found if b.part == "compensation"]
    assert sorted(undo[:2]) == [
        (f"{prefix}.refund", "compensated"),
        (f"{prefix}.unpack", "compensated"),
    ]
    assert undo[2] == (f"{prefix}.release", "compensated")  # the first step is undone last
    assert all(b.started_at is not None and b.finished_at is not None for b in found)
    assert all(b.worker for b in found if b.outcome != "retried")  # who ran it is recorded
    text = render_text(execution)
    assert len(_rows(text)) == len(found)
    assert "payment gateway timed out" in text and "no truck today" in text
    assert ET.fromstring(render_svg(execution)).tag == f"{SVG}svg"
