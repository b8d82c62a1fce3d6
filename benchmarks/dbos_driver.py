"""The DBOS contender (W6, W8): workflows of 5 no-op steps, run in this process on PostgreSQL.

DBOS (``pip install dbos``) checkpoints each step of a workflow to its system
database and runs the workflows in the caller's process, in threads: there is no
broker and no worker. `run.py` starts this script once for the whole run with the
interpreter of the venv ``nox -s bench`` makes for DBOS, and speaks to it in JSON
lines like `orig_driver` (one command per line on stdin, one answer per line on
stdout; anything else printed goes to stderr):

- ``{"op": "throughput", "n": N, "keep": false}`` starts N workflows at once with
  ``DBOS.start_workflow`` and waits for every handle's result; answers ``{"seconds",
  "ids", "failed"}``. Unless `keep`, the workflows are then deleted (not timed), so
  every repetition starts from the same, empty, system database.
- ``{"op": "latency", "n": N}`` calls the workflow N times in a row (a plain call
  blocks until the workflow finished, its steps checkpointed); answers
  ``{"latencies", "ids"}`` and deletes them.
- ``{"op": "delete", "ids": [...]}`` deletes workflows kept by a throughput run.
- ``{"op": "versions"}`` answers the versions of DBOS and its drivers.
- ``{"op": "quit"}``.

The system database is ``BENCH_DBOS_URL`` (default ``bench_dbos`` on the local
PostgreSQL), created here if absent (DBOS would create it too, but only warns if
it cannot).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

import psycopg  # a dependency of dbos
from dbos import DBOS, DBOSConfig, SetWorkflowID

URL = os.environ.get("BENCH_DBOS_URL", "postgresql://postgres@127.0.0.1:5432/bench_dbos")
STEPS = 5
#: Workflows deleted per call (one statement each).
DELETE_BATCH = 500


def _noop_step(n: int) -> Callable[[int], dict[str, Any]]:
    """The no-op step ``noop<n>``: does nothing, outputs an empty dict (as the saga's do)."""

    def noop(i: int) -> dict[str, Any]:
        return {}

    noop.__name__ = noop.__qualname__ = f"noop{n}"
    return DBOS.step()(noop)


NOOPS = [_noop_step(n) for n in range(1, STEPS + 1)]


@DBOS.workflow()
def five(i: int) -> None:
    """Five no-op steps in a row, each checkpointed by DBOS."""
    for step in NOOPS:
        step(i)


def ensure_database(url: str) -> None:
    """Create the system database of `url` if it does not exist."""
    base, _, name = url.rpartition("/")
    name = name.split("?", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def forget(ids: list[str]) -> None:
    """Delete workflows and their step outputs through DBOS's own API."""
    for i in range(0, len(ids), DELETE_BATCH):
        DBOS.delete_workflows(ids[i : i + DELETE_BATCH])


def throughput(command: dict[str, Any]) -> dict[str, Any]:
    """Start N workflows at once, wait for all of them; the seconds it took."""
    n = int(command["n"])
    started = time.perf_counter()
    handles = [DBOS.start_workflow(five, i) for i in range(n)]
    failed = 0
    for handle in handles:
        try:
            handle.get_result()
        except Exception:  # counted: a workflow that did not complete
            failed += 1
    seconds = time.perf_counter() - started
    ids = [handle.get_workflow_id() for handle in handles]
    if not command.get("keep"):
        forget(ids)
    return {"seconds": seconds, "ids": ids, "failed": failed}


def latency(command: dict[str, Any]) -> dict[str, Any]:
    """Call the workflow N times in a row, each call blocking until it finished."""
    latencies, ids = [], []
    for i in range(int(command["n"])):
        workflow_id = str(uuid.uuid4())
        started = time.perf_counter()
        with SetWorkflowID(workflow_id):
            five(i)
        latencies.append(time.perf_counter() - started)
        ids.append(workflow_id)
    forget(ids)
    return {"latencies": latencies, "ids": ids}


def versions() -> dict[str, str]:
    """DBOS, SQLAlchemy, psycopg and Python versions of this venv."""
    found = {p: importlib.metadata.version(p) for p in ("dbos", "SQLAlchemy", "psycopg")}
    return {**found, "python": platform.python_version()}


def serve(commands: TextIO, answers: TextIO) -> None:
    """Answer commands until ``quit`` or the end of input."""
    for line in commands:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        try:
            if op == "throughput":
                answer = throughput(command)
            elif op == "latency":
                answer = latency(command)
            elif op == "delete":
                forget(list(command["ids"]))
                answer = {}
            elif op == "versions":
                answer = versions()
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the harness, which stops the run
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> int:
    """Launch DBOS on the system database, then serve on stdin/stdout."""
    answers = sys.stdout
    sys.stdout = sys.stderr
    ensure_database(URL)
    config: DBOSConfig = {
        "name": "celery-saga-bench",
        "system_database_url": URL,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        serve(sys.stdin, answers)
    finally:
        DBOS.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
