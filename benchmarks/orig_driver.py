"""The caller of the celery-saga 0.1.1 contender: starts its sagas, times them, reports.

Run by `run.py` with the interpreter of 0.1.1's venv, once for the whole run. It
reads one JSON command per line on stdin and answers each with one JSON line on
stdout (anything else it prints goes to stderr):

- ``{"op": "throughput", "saga": "five" | "fanout", "n": N, "ran": KEY, "timeout": S,
  "poll": S}`` starts N sagas (inputs ``i`` and, for the fan-out saga, ``ran``) and
  waits until every record says it finished; answers ``{"seconds", "ids",
  "unfinished", "statuses"}``. Waiting reads the oldest unfinished record every
  `poll` seconds, like the harness does for the other contenders: one read per
  poll, nothing added to the workers.
- ``{"op": "latency", "n": N, "interval": S, "timeout": S}`` runs N sagas one at a
  time, each followed by 0.1.1's blocking ``SagaResult.get(timeout, interval)``
  (which polls the record every `interval` seconds); answers ``{"latencies", "ids"}``.
- ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import redis
from orig_app import FANOUT, FIVE, STORE_URL

TERMINAL = {"completed", "compensated", "failed"}


def record_status(client: redis.Redis, saga_id: str) -> str | None:
    """The status in 0.1.1's record of `saga_id` (its key is ``celery_saga:<id>``)."""
    raw = client.get(f"celery_saga:{saga_id}")
    return None if raw is None else str(json.loads(raw)["status"])


def throughput(command: dict[str, Any], client: redis.Redis) -> dict[str, Any]:
    """Start N sagas, wait for all of them, return the seconds it took."""
    saga = FIVE if command["saga"] == "five" else FANOUT
    extra = {"ran": command["ran"]} if command["saga"] == "fanout" else {}
    deadline = time.monotonic() + float(command.get("timeout", 600))
    poll = float(command.get("poll", 0.02))
    started = time.perf_counter()
    ids = [saga.run(i=i, **extra).saga_id for i in range(int(command["n"]))]
    statuses: dict[str, int] = {}
    pending = 0
    while pending < len(ids) and time.monotonic() < deadline:
        status = record_status(client, ids[pending])
        if status in TERMINAL:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            pending += 1
        else:
            time.sleep(poll)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "ids": ids, "unfinished": len(ids) - pending, "statuses": statuses}


def latency(command: dict[str, Any]) -> dict[str, Any]:
    """Run N sagas one after the other, blocking on each; return each one's seconds."""
    latencies, ids = [], []
    timeout, interval = float(command.get("timeout", 60)), float(command["interval"])
    for i in range(int(command["n"])):
        started = time.perf_counter()
        result = FIVE.run(i=i)
        result.get(timeout=timeout, interval=interval)
        latencies.append(time.perf_counter() - started)
        ids.append(result.saga_id)
    return {"latencies": latencies, "ids": ids}


def serve(commands: TextIO, answers: TextIO) -> None:
    """Answer commands until ``quit`` or the end of input."""
    client = redis.Redis.from_url(STORE_URL)
    for line in commands:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        try:
            if op == "throughput":
                answer = throughput(command, client)
            elif op == "latency":
                answer = latency(command)
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the harness, which stops the run
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> int:
    """Serve on stdin/stdout; everything else printed goes to stderr."""
    answers = sys.stdout
    sys.stdout = sys.stderr
    serve(sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
