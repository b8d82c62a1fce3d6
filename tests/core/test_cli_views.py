"""`celery saga graph`, `show --json / --timeline / --follow`, `stats` and `list --wide`.

Run in-process with click's CliRunner against an app whose store is a memory store, a
real worker where a saga must run (``--follow`` on a running saga), and a child process
for Ctrl-C (a real SIGINT).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner, Result
from seeing_app import composed, make_app
from support import wait_until

from celery_saga import Saga, SagaResult, SagaStatus, StepStatus
from celery_saga.backends import MemorySagaBackend
from celery_saga.cli import saga as saga_cli
from celery_saga.cli.commands import EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from celery_saga.cli.views import EXIT_INTERRUPTED
from celery_saga.models import SagaExecution
from celery_saga.testing import make_execution
from celery_saga.timeline import bars
from celery_saga.views import iso

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SVG = "{http://www.w3.org/2000/svg}"


def cli(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=app))


@pytest.fixture
def app() -> Celery:
    made = Celery("cli-views", broker="memory://", set_as_current=False)
    made.conf.saga_backend = MemorySagaBackend()
    return made


def store_of(app: Celery) -> MemorySagaBackend:
    store = app.conf.saga_backend
    assert isinstance(store, MemorySagaBackend)
    return store


def stored(app: Celery, execution: SagaExecution) -> SagaExecution:
    store_of(app).create(execution)
    return execution


# -- graph --------------------------------------------------------------------------------


def test_graph_of_a_saga_defined_on_the_app_in_each_format(app: Celery) -> None:
    parent, _ = composed(app, f"cv{uuid.uuid4().hex[:6]}")
    mermaid = cli(app, "graph", parent.name)
    assert mermaid.exit_code == EXIT_OK, mermaid.output
    assert mermaid.stdout == parent.to_mermaid()
    dot = cli(app, "graph", parent.name, "--format", "dot")
    assert dot.exit_code == EXIT_OK and dot.stdout == parent.to_dot()
    svg = cli(app, "graph", parent.name, "--format", "svg")
    root = ET.fromstring(svg.stdout)
    steps = sorted(g.get("data-step") for g in root.iter(f"{SVG}g") if g.get("data-step"))
    assert steps == ["0", "1", "2", "3", "4"]
    assert svg.stderr == ""  # no store was read: no warning about it


def test_graph_of_a_stored_execution_needs_no_definition(app: Celery) -> None:
    execution = make_execution(steps=3, stages=[0, 1, 1], name="not.defined.here")
    execution.steps[0].status = StepStatus.SUCCESS
    stored(app, execution)
    shown = cli(app, "graph", execution.saga_id.upper())
    assert shown.exit_code == EXIT_OK, shown.output
    assert 's0["tasks.step0"]' in shown.stdout and "class s0 status_success" in shown.stdout
    assert "class s1,s2 status_pending" in shown.stdout
    dot = cli(app, "graph", execution.saga_id, "--format", "dot")
    assert f"saga not.defined.here {execution.saga_id} (RUNNING)" in dot.stdout


def test_graph_of_neither_a_saga_nor_an_execution_says_so(app: Celery) -> None:
    known = Saga("cv.known", app=app).add_step("cv.task")
    unknown = cli(app, "graph", "cv.unknown")
    assert unknown.exit_code == EXIT_NOT_FOUND
    assert "'cv.unknown' is neither a saga defined on the app nor a saga id" in unknown.stderr
    assert "cv.known" in unknown.stderr and "Traceback" not in unknown.output
    missing = cli(app, "graph", str(uuid.uuid4()))
    assert missing.exit_code == EXIT_NOT_FOUND and "no saga " in missing.stderr
    bad = cli(app, "graph", known.name, "--format", "png")
    assert bad.exit_code == EXIT_USAGE


# -- show --json and --timeline -----------------------------------------------------------


def rich_execution() -> SagaExecution:
    """A compensated execution with compensation data, workers and an attempt history."""
    t = 1_780_000_000.0
    ex = make_execution(steps=2, name="cv.rich", status=SagaStatus.COMPENSATED)
    ex.created_at, ex.finished_at = t, t + 2
    first, second = ex.steps
    first.status, first.attempt, first.started_at, first.finished_at = (
        StepStatus.COMPENSATED,
        2,
        t + 0.5,
        t + 0.6,
    )
    first.worker, first.output, first.compensation_data = "celery@a", {"id": 7}, {"undo": 7}
    first.compensation_task_name, first.comp_attempt, first.comp_worker = "cv.undo", 1, "celery@b"
    first.comp_started_at, first.comp_finished_at = t + 1.0, t + 1.2
    first.history = [
        {
            "part": "forward",
            "attempt": 1,
            "started_at": t,
            "finished_at": t + 0.1,
            "worker": "celery@a",
            "outcome": "retried",
            "error": "timeout",
        }
    ]
    second.status, second.attempt, second.error = StepStatus.FAILED, 1, "x" * 300
    second.started_at, second.finished_at = t + 0.7, t + 0.8
    ex.error = "step 1 failed: " + "x" * 300
    return ex


def test_show_json_has_the_keys_of_result_steps_and_iso_times(app: Celery) -> None:
    execution = stored(app, rich_execution())
    data = json.loads(cli(app, "show", execution.saga_id, "--json").stdout)
    result_steps = SagaResult(execution.saga_id, store_of(app)).steps
    assert result_steps is not None
    times = {"started_at", "finished_at", "compensation_started_at", "compensation_finished_at"}
    for shown, kept in zip(data["steps"], result_steps):
        assert set(shown) == set(kept)  # one shape for both
        for key, value in kept.items():
            if key in times:
                assert shown[key] == iso(value) and (value is None or ISO.match(shown[key]))
            elif key != "history":
                assert shown[key] == value, key
    first = data["steps"][0]
    assert first["compensation_data"] == {"undo": 7}
    assert (first["compensation_task_name"], first["compensation_attempt"]) == ("cv.undo", 1)
    assert (first["worker"], first["compensation_worker"]) == ("celery@a", "celery@b")
    assert first["compensation_started_at"] == "2026-05-28T20:26:41.000000Z"
    assert first["history"] == [
        {
            "part": "forward",
            "attempt": 1,
            "started_at": "2026-05-28T20:26:40.000000Z",
            "finished_at": "2026-05-28T20:26:40.100000Z",
            "worker": "celery@a",
            "outcome": "retried",
            "error": "timeout",
        }
    ]
    assert result_steps[0]["history"][0]["started_at"] == 1_780_000_000.0  # floats there
    assert ISO.match(data["created_at"]) and data["finished_at"] == "2026-05-28T20:26:42.000000Z"
    assert data["status"] == "compensated" and data["error"] == execution.error

    with_bars = json.loads(cli(app, "show", execution.saga_id, "--json", "--timeline").stdout)
    assert with_bars["timeline"] == [b.as_dict() for b in bars(execution)]
    assert [b["outcome"] for b in with_bars["timeline"]] == [
        "retried",
        "success",
        "failed",
        "compensated",
    ]


def test_show_timeline_prints_the_text_gantt(app: Celery) -> None:
    execution = stored(app, rich_execution())
    shown = cli(app, "show", execution.saga_id, "--timeline", "--width", "20")
    assert shown.exit_code == EXIT_OK, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"saga {execution.saga_id}  cv.rich  COMPENSATED")
    rows = [line for line in lines if line.startswith("[")]
    assert [row.split()[2] for row in rows] == ["forward", "forward", "forward", "undo"]
    assert "20:26:40.000" in rows[0] and "celery@a" in rows[0] and "retried" in rows[0]
    assert all(len(row.split("|")[1]) == 20 for row in rows)


def test_list_cuts_errors_in_the_table_only(app: Celery) -> None:
    execution = stored(app, rich_execution())
    table = cli(app, "list")
    assert execution.error is not None
    assert execution.error[:60] in table.stdout and execution.error not in table.stdout
    wide = cli(app, "list", "--wide")
    assert execution.error in wide.stdout
    data = json.loads(cli(app, "list", "--json").stdout)
    assert data["items"][0]["error"] == execution.error  # whole, 315 characters


# -- show --follow ------------------------------------------------------------------------


class CountingStore(MemorySagaBackend):
    """A memory store that counts the reads of each execution."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.lock = threading.Lock()

    def get(self, saga_id: str) -> SagaExecution | None:
        with self.lock:
            self.reads[saga_id] += 1
        return super().get(saga_id)


@pytest.fixture
def seeing() -> tuple[Celery, dict[str, Saga]]:
    return make_app(f"follow{uuid.uuid4().hex[:6]}")


@pytest.fixture
def saga_app(seeing: tuple[Celery, dict[str, Saga]]) -> Celery:
    return seeing[0]


@pytest.fixture
def saga_store() -> CountingStore:
    return CountingStore()


def _in_order(lines: list[str], wanted: list[str]) -> bool:
    at = 0
    for line in lines:
        if at < len(wanted) and line == wanted[at]:
            at += 1
    return at == len(wanted)


def test_follow_prints_each_stage_as_it_moves_then_the_outcome(
    seeing: tuple[Celery, dict[str, Saga]], saga_worker: Any, saga_store: CountingStore
) -> None:
    app, sagas = seeing
    result = sagas["approval"].run(order_id="F-1", amount=3)
    saga_id = result.saga_id

    def waiting() -> bool:
        execution = saga_store.get(saga_id)
        assert execution is not None
        return execution.step(1).status is StepStatus.RUNNING

    def approve_once_seen_waiting() -> None:
        wait_until(waiting, 30, "the external step to wait")
        seen = saga_store.reads[saga_id]
        # The follower has read the waiting step at least twice: it printed that state.
        wait_until(lambda: saga_store.reads[saga_id] >= seen + 4, 30, "the follower to read")
        assert result.complete_step("approve", {"approved": True})

    helper = threading.Thread(target=approve_once_seen_waiting)
    helper.start()
    followed = cli(app, "show", saga_id, "--follow", "--interval", "0.02")
    helper.join(30)
    assert followed.exit_code == EXIT_OK, followed.output
    lines = followed.stdout.splitlines()
    assert _in_order(
        lines,
        [
            "stage 1/3: 1/1 done",
            "stage 2/3: 0/1 done (1 running)",
            "stage 2/3: 1/1 done",
            "stage 3/3: 1/1 done",
        ],
    ), lines
    assert lines[0] == f"saga {saga_id} {sagas['approval'].name}: RUNNING"
    assert re.fullmatch(rf"saga {saga_id} COMPLETED in \d+\.\d{{3}}s", lines[-1])
    assert len(lines) == len(set(lines))  # a line only when something changed


def test_follow_of_a_finished_saga_exits_at_once_with_its_outcome(app: Celery) -> None:
    done = make_execution(steps=1, status=SagaStatus.COMPLETED)
    done.steps[0].status, done.steps[0].attempt = StepStatus.SUCCESS, 1
    stored(app, done)
    followed = cli(app, "show", done.saga_id, "--follow")
    assert followed.exit_code == EXIT_OK
    assert followed.stdout.splitlines()[1:] == [
        "stage 1/1: 1/1 done",
        f"saga {done.saga_id} COMPLETED",
    ]

    undone = stored(app, rich_execution())
    followed = cli(app, "show", undone.saga_id, "--follow")
    assert followed.exit_code == EXIT_REFUSED  # it ended, but not COMPLETED
    assert "stage 1/2: 1/1 done (1 compensated)" in followed.stdout
    assert "stage 2/2: 1/1 done (1 failed)" in followed.stdout
    assert followed.stdout.splitlines()[-1].startswith(f"saga {undone.saga_id} COMPENSATED in 2")

    assert cli(app, "show", str(uuid.uuid4()), "--follow").exit_code == EXIT_NOT_FOUND
    both = cli(app, "show", done.saga_id, "--follow", "--json")
    assert both.exit_code == EXIT_USAGE and "--follow prints progress lines" in both.stderr


FOLLOWER = textwrap.dedent(
    """
    import signal
    from types import SimpleNamespace

    from celery import Celery

    from celery_saga.backends import MemorySagaBackend
    from celery_saga.cli import saga
    from celery_saga.models import StepStatus
    from celery_saga.testing import make_execution

    # Ctrl-C as at a terminal: a shell that ran the tests in the background (no job
    # control) leaves SIGINT ignored, and Python keeps an ignored SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    app = Celery("follower", broker="memory://", set_as_current=False)
    app.conf.saga_backend = MemorySagaBackend()
    execution = make_execution(steps=2)
    execution.steps[0].status, execution.steps[0].attempt = StepStatus.RUNNING, 1
    app.conf.saga_backend.create(execution)
    saga.main(
        ["show", execution.saga_id, "--follow", "--interval", "0.05"],
        obj=SimpleNamespace(app=app),
        prog_name="celery saga",
    )
    """
)


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The child's stdout, line by line, read by a thread (so a wait can have a deadline)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_ctrl_c_stops_following_with_exit_130_and_no_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", FOLLOWER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = _lines(proc)
        assert "RUNNING" in lines.get(timeout=60)
        assert lines.get(timeout=30).startswith("stage 1/2: 0/1 done (1 running)")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted: stopped following saga" in err and "Traceback" not in err


# -- stats --------------------------------------------------------------------------------


@pytest.fixture
def window(app: Celery) -> float:
    """Executions of two sagas in the last hour, and three older ones."""
    now = time.time()

    def add(name: str, status: SagaStatus, took: float | None, age: float = 600) -> None:
        execution = make_execution(name=name, status=status, created_at=now - age)
        if took is not None:
            execution.finished_at = execution.created_at + took
        stored(app, execution)

    for took in (1, 2, 3, 4, 5, 10):
        add("shop.order", SagaStatus.COMPLETED, took)
    add("shop.order", SagaStatus.COMPENSATED, 6)
    add("shop.order", SagaStatus.COMPENSATED, 7)
    add("shop.order", SagaStatus.FAILED, 8)
    add("shop.order", SagaStatus.CANCELLED, 9)
    add("shop.order", SagaStatus.RUNNING, None)
    add("shop.refund", SagaStatus.REVERTED, 0.5)
    add("shop.refund", SagaStatus.COMPLETED, 1.5)
    for _ in range(3):
        add("shop.order", SagaStatus.FAILED, 1, age=7200)  # outside the window
    return now


def test_stats_json_over_a_window(app: Celery, window: float) -> None:
    data = json.loads(cli(app, "stats", "--since", "1h", "--json").stdout)
    assert data["total"] == 13 and data["finished"] == 12
    assert data["by_status"] == {
        "pending": 0,
        "running": 1,
        "compensating": 0,
        "completed": 7,
        "compensated": 2,
        "failed": 1,
        "cancelled": 1,
        "reverted": 1,
    }
    assert data["failure_rate"] == pytest.approx(1 / 12)
    assert data["compensation_rate"] == pytest.approx(4 / 12)
    assert (data["duration_p50"], data["duration_p95"]) == pytest.approx((4, 10))
    order = data["by_name"]["shop.order"]
    assert (order["total"], order["finished"]) == (11, 10)
    assert (order["failure_rate"], order["compensation_rate"]) == pytest.approx((0.1, 0.3))
    assert (order["duration_p50"], order["duration_p95"]) == pytest.approx((5, 10))
    assert data["by_name"]["shop.refund"]["by_status"]["reverted"] == 1
    assert ISO.match(data["since"]) and ISO.match(data["until"])
    assert data["window_seconds"] == 3600

    wider = json.loads(cli(app, "stats", "--since", "3h", "--json").stdout)
    assert wider["total"] == 16 and wider["by_status"]["failed"] == 4
    named = json.loads(cli(app, "stats", "--name", "shop.refund", "--json").stdout)
    assert named["total"] == 2 and list(named["by_name"]) == ["shop.refund"]


def test_stats_table(app: Celery, window: float) -> None:
    shown = cli(app, "stats", "--since", "1h")
    assert shown.exit_code == EXIT_OK, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(": 13")
    assert (
        "  by status: 1 running, 7 completed, 2 compensated, 1 failed, 1 cancelled, 1 reverted"
        in lines
    )
    assert (
        "  finished 12: failure rate 8.3%, compensation rate 33.3%; duration p50 4.000s, "
        "p95 10.000s"
    ) in lines
    order = next(line for line in lines if line.startswith("shop.order"))
    assert order.split()[:5] == ["shop.order", "11", "10", "10.0%", "30.0%"]
    assert cli(app, "stats", "--since", "soon").exit_code == EXIT_USAGE


def test_stats_pages_through_every_execution_of_the_window(app: Celery) -> None:
    now = time.time()
    for i in range(1005):
        execution = make_execution(name="bulk", status=SagaStatus.COMPLETED, created_at=now - i)
        execution.finished_at = execution.created_at + 1
        stored(app, execution)
    data = json.loads(cli(app, "stats", "--since", "2h", "--json").stdout)
    assert data["total"] == 1005 and data["by_status"]["completed"] == 1005
    empty = json.loads(cli(app, "stats", "--name", "nothing", "--json").stdout)
    assert empty["total"] == 0 and empty["failure_rate"] is None and empty["by_name"] == {}
