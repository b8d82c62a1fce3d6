"""Instructions a worker executes per saga: this project against the plain chain.

Why: W1 compares the two contenders' throughput on a machine whose load moves the
figure by more than the difference between them; counting the instructions each
worker executes for the same sagas does not depend on that load, and says how much
of a step's work in the worker is the saga's own (its header, the step's outcome
checked and encoded, the store write prepared) beside what both contenders do
(consume, run the task, write the outcome, publish the next message).

How: for each contender, one solo-pool worker (``bench_app``, the same tasks as W1)
runs under valgrind's callgrind with collection off; the caller (this process) runs
a warm-up of sagas, turns collection on (``callgrind_control``), runs N five-step
sagas (``bench.five``; the chain: ``chain`` of the same five tasks) and waits for
each to finish the way W1 does, turns collection off and stops the worker. The
figure is the worker's instructions (user space, every thread) over N. The broker,
the state store and the chain's result backend are a private ``redis-server``, so
nothing else talks to them. Needs ``valgrind``, ``callgrind_control``,
``callgrind_annotate`` and ``redis-server`` on PATH. Not part of ``nox -s bench``:
the two runs take a minute or so. Run it with the bench venv's interpreter::

    PYTHONPATH=benchmarks .nox/bench/bin/python benchmarks/worker_instructions.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis
from processes import POLL, Worker, wait
from server_time import PrivateRedis

HERE = Path(__file__).parent
CONTENDERS = ("saga", "chain")
_TOTAL = re.compile(r"^\s*([\d,]+) .*PROGRAM TOTALS", re.MULTILINE)


def _tools() -> None:
    missing = [
        tool
        for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "redis-server")
        if shutil.which(tool) is None
    ]
    if missing:
        raise SystemExit(f"worker_instructions needs {', '.join(missing)} on PATH")


def measure(role: str, n: int, warmup: int, server: PrivateRedis) -> float:
    """Instructions per saga of `role`'s worker over `n` sagas (after `warmup` more)."""
    from bench_app import build
    from celery import chain

    queue = f"instr-{role}-{uuid.uuid4().hex[:8]}"
    base = server.url.rsplit("/", 1)[0]
    env = {
        "BENCH_BROKER": f"{base}/0",
        "BENCH_STORE": f"{base}/1?prefix=instr:",
        "BENCH_RESULTS": f"{base}/2",
        "BENCH_STATS_URL": f"{base}/3",
        # The caller's path first: PYTHONPATH=<another checkout's src>:... measures it.
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE)) if p),
        "PYTHONMALLOC": "malloc",  # valgrind sees every allocation as it is
    }
    out = HERE / f".callgrind-{role}.log"  # benchmarks/.*.log: not committed
    out.unlink(missing_ok=True)
    worker = Worker(
        role,
        queue,
        env,
        pool="solo",
        prefix=(
            *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
            f"--callgrind-out-file={out}",
        ),
        log_name=f".worker-instructions-{role}.log",
    )
    results = redis.Redis.from_url(env["BENCH_RESULTS"])
    try:
        worker.ready(timeout=600)  # valgrind starts the interpreter slowly
        os.environ["BENCH_RESULTS"] = env["BENCH_RESULTS"]  # the chain's result backend
        bench = build(role, queue, env["BENCH_STORE"], env["BENCH_BROKER"])

        def run(count: int) -> None:
            if role == "saga":
                from celery_saga.config import backend_for

                backend = backend_for(bench.app)
                ids = [bench.five.run(i=i).saga_id for i in range(count)]

                def finished(saga_id: str) -> bool:
                    status = backend.get_status(saga_id)
                    return status is not None and status.is_terminal

            else:
                ids = [chain(*[t.s() for t in bench.noops]).apply_async().id for _ in range(count)]

                def finished(task_id: str) -> bool:
                    return bool(results.exists(f"celery-task-meta-{task_id}"))

            for item in ids:
                wait(lambda item=item: finished(item), 600, f"{role} {item}", interval=POLL)

        run(warmup)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(worker.proc.pid)], check=True, capture_output=True
        )
        run(n)
        subprocess.run(
            ["callgrind_control", "-i", "off", str(worker.proc.pid)],
            check=True,
            capture_output=True,
        )
    finally:
        worker.stop(grace=120)  # callgrind writes its counts as the worker exits
    totals = 0
    for part in out.parent.glob(out.name + "*"):
        annotated = subprocess.run(
            ["callgrind_annotate", str(part)], check=True, capture_output=True, text=True
        ).stdout
        found = _TOTAL.search(annotated)
        if found:
            totals += int(found.group(1).replace(",", ""))
        part.unlink()
    return totals / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=100, help="sagas measured (default 100)")
    parser.add_argument("--warmup", type=int, default=20, help="sagas run first, not counted")
    args = parser.parse_args()
    _tools()
    figures = {}
    for role in CONTENDERS:
        server = PrivateRedis(f"instructions-{role}")
        try:
            started = time.monotonic()
            figures[role] = measure(role, args.sagas, args.warmup, server)
            print(
                f"{role:6} {figures[role] / 1e6:7.2f} M instructions per saga in the worker "
                f"({args.sagas} sagas, {time.monotonic() - started:.0f} s)"
            )
        finally:
            server.stop()
    print(f"celery-saga / plain chain: {figures['saga'] / figures['chain']:.3f}")


if __name__ == "__main__":
    main()
