"""W11's caller for celery-saga-redis 0.4.0: runs `bench_app`'s ``five`` with 0.4.0's code.

Run by `server_time` with the interpreter of the baseline venv (celery-saga-core and
celery-saga-redis from commit 040c323, which ``nox -s bench`` makes), so a 0.4.0
worker only ever talks to a 0.4.0 caller. It builds `bench_app`'s app from the
environment (``BENCH_STORE``, ``BENCH_BROKER``, ``BENCH_QUEUE``), reads one JSON
command per line on stdin and answers each with one JSON line on stdout:

- ``{"op": "versions"}``: the venv's package versions.
- ``{"op": "run", "n": N, "timeout": S}`` starts N sagas, then waits for each with
  ``SagaResult.get()``; answers ``{"seconds", "failed"}``.
- ``{"op": "quit"}``.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import time
from typing import Any, TextIO

PACKAGES = ("celery-saga-core", "celery-saga-redis", "celery", "kombu", "redis")


def run(n: int, timeout: float) -> dict[str, Any]:
    """N sagas of 5 no-op steps started at once, each awaited with ``get()``."""
    from bench_app import BENCH

    started = time.perf_counter()
    results = [BENCH.five.run(i=i) for i in range(n)]
    failed = 0
    for result in results:
        try:
            result.get(timeout=timeout)
        except Exception:  # a failed or unfinished saga: counted, reported by the harness
            failed += 1
    return {"seconds": time.perf_counter() - started, "failed": failed}


def versions() -> dict[str, str]:
    """The versions of what this interpreter runs."""
    found = {name: importlib.metadata.version(name) for name in PACKAGES}
    return {**found, "python": platform.python_version()}


def serve(commands: TextIO, answers: TextIO) -> None:
    """Answer commands until ``quit`` or the end of input."""
    for line in commands:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        try:
            if op == "run":
                answer: dict[str, Any] = run(int(command["n"]), float(command["timeout"]))
            elif op == "versions":
                answer = dict(versions())
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
