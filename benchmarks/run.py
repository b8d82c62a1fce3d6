"""The benchmark harness (``nox -s bench``): sagas against plain Celery chains.

W1: N sagas of 5 no-op steps on a Redis broker, one prefork worker with 2
processes, against the same 5 tasks as a plain Celery chain with a Redis result
backend. Both contenders run in the same invocation, alternating, for several
repetitions; the table reports medians, spread and the ratio saga/chain. A
separate counting pass (not timed) reports broker messages and state-store round
trips per step. Results go to the terminal and to benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import chain
from celery.signals import after_task_publish

HERE = Path(__file__).parent
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
BROKER_DB, RESULTS_DB, STORE_DB = 3, 4, 5


class Worker:
    """One `celery worker` process (prefork) for one contender."""

    def __init__(self, role: str, queue: str, env: dict[str, str], concurrency: int = 2) -> None:
        self.ready_key = f"bench:ready:{uuid.uuid4().hex}"
        self.stats = redis.Redis.from_url(f"{REDIS}/{STORE_DB}")
        full = {
            **os.environ,
            **env,
            "BENCH_ROLE": role,
            "BENCH_QUEUE": queue,
            "BENCH_READY_KEY": self.ready_key,
            "PYTHONPATH": str(HERE),
        }
        self.log = open(HERE / f".worker-{role}-{queue}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench_app",
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "-Q",
                queue,
                "-l",
                "warning",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-n",
                f"{role}-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait(lambda: self.stats.exists(self.ready_key), 60, f"the {role} worker")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.stats.delete(self.ready_key)
        self.log.close()
        if self.proc.returncode in (0, -signal.SIGTERM):
            Path(self.log.name).unlink(missing_ok=True)


def wait(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


def run_sagas(saga: Any, store: redis.Redis, prefix: str, n: int) -> float:
    """Start n sagas and return the seconds until all are COMPLETED."""
    done_key = f"{prefix}idx:status:completed"
    before = store.zcard(done_key)
    started = time.perf_counter()
    for i in range(n):
        saga.run(i=i)
    wait(lambda: store.zcard(done_key) >= before + n, 600, "the sagas")
    took = time.perf_counter() - started
    failed = store.zcard(f"{prefix}idx:status:compensated") + store.zcard(
        f"{prefix}idx:status:failed"
    )
    if failed:
        raise SystemExit(f"{failed} benchmark sagas did not complete")
    return took


def run_chains(noops: list[Any], results: redis.Redis, n: int) -> float:
    """Start n chains of the five tasks and return the seconds until all have finished."""
    started = time.perf_counter()
    ids = [chain(*[t.s() for t in noops]).apply_async().id for _ in range(n)]
    keys = [f"celery-task-meta-{i}" for i in ids]

    def finished() -> bool:
        return int(results.exists(*keys)) == len(keys)

    wait(finished, 600, "the chains")
    return time.perf_counter() - started


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": times}


def machine() -> dict[str, Any]:
    import celery
    import kombu

    info = redis.Redis.from_url(REDIS).info("server")
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_server": info.get("redis_version"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def count_pass(make: Any, run_id: str, n: int) -> dict[str, float]:
    """Run n sagas with counting workers and return per-step message and round-trip counts."""
    key = f"bench:stats:{run_id}"
    prefix = f"bench-count-{run_id}:"
    queue = f"bench-count-{run_id}"
    store_url = f"{REDIS}/{STORE_DB}?prefix={prefix}"
    env = {
        "BENCH_BROKER": f"{REDIS}/{BROKER_DB}",
        "BENCH_STORE": store_url,
        "BENCH_COUNT": "1",
        "BENCH_STATS_URL": f"{REDIS}/{STORE_DB}",
        "BENCH_STATS_KEY": key,
    }
    app, saga, _ = make("saga", queue, store_url)
    published = {"n": 0}

    def on_publish(**_: Any) -> None:
        published["n"] += 1

    after_task_publish.connect(on_publish, weak=False)
    worker = Worker("saga", queue, env)
    try:
        from celery_saga.config import backend_for

        caller_store = backend_for(app)
        caller_store.stats.reset()
        run_sagas(saga, redis.Redis.from_url(f"{REDIS}/{STORE_DB}"), prefix, n)
    finally:
        worker.stop()
        after_task_publish.disconnect(on_publish)
    stats_client = redis.Redis.from_url(f"{REDIS}/{STORE_DB}", decode_responses=True)
    workers = {k: int(v) for k, v in stats_client.hgetall(key).items()}
    stats_client.delete(key)
    cleanup(prefix)
    steps = n * 5
    caller = caller_store.stats.snapshot()
    return {
        "sagas": n,
        "steps": steps,
        "broker_messages_per_step": (workers.get("published", 0) + published["n"]) / steps,
        "store_round_trips_per_step": (workers.get("round_trips", 0) + caller["round_trips"])
        / steps,
        "store_round_trips_per_step_in_workers": workers.get("round_trips", 0) / steps,
        "store_round_trips_per_saga_in_caller": caller["round_trips"] / n,
        "store_bytes_written_per_step": (workers.get("bytes_written", 0) + caller["bytes_written"])
        / steps,
        "tasks_executed_per_step": workers.get("executed", 0) / steps,
    }


def cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(f"{REDIS}/{STORE_DB}")
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sagas", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--count-sagas", type=int, default=100)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}:"
    store_url = f"{REDIS}/{STORE_DB}?prefix={prefix}"
    env = {
        "BENCH_BROKER": f"{REDIS}/{BROKER_DB}",
        "BENCH_STORE": store_url,
        "BENCH_RESULTS": f"{REDIS}/{RESULTS_DB}",
        "BENCH_STATS_URL": f"{REDIS}/{STORE_DB}",
    }
    os.environ.update(env)
    sys.path.insert(0, str(HERE))
    from bench_app import make

    print(f"counting pass ({args.count_sagas} sagas, not timed)...", flush=True)
    counts = count_pass(make, run_id, args.count_sagas)

    saga_queue, chain_queue = f"bench-saga-{run_id}", f"bench-chain-{run_id}"
    _, saga, _ = make("saga", saga_queue, store_url)
    _, _, noops = make("chain", chain_queue)
    workers = [Worker("saga", saga_queue, env), Worker("chain", chain_queue, env)]
    store = redis.Redis.from_url(f"{REDIS}/{STORE_DB}")
    results = redis.Redis.from_url(f"{REDIS}/{RESULTS_DB}")
    times: dict[str, list[float]] = {"saga": [], "chain": []}
    try:
        run_sagas(saga, store, prefix, 20)  # warm up both workers
        run_chains(noops, results, 20)
        for rep in range(args.reps):
            order = ["chain", "saga"] if rep % 2 == 0 else ["saga", "chain"]
            for contender in order:
                if contender == "saga":
                    took = run_sagas(saga, store, prefix, args.sagas)
                else:
                    took = run_chains(noops, results, args.sagas)
                times[contender].append(took)
                print(f"  rep {rep + 1} {contender:<5} {took:7.3f} s", flush=True)
    finally:
        for worker in workers:
            worker.stop()
        cleanup(prefix)
        for key in results.scan_iter(match="celery-task-meta-*", count=1000):
            results.delete(key)

    saga_s, chain_s = summary(times["saga"]), summary(times["chain"])
    ratio = saga_s["median"] / chain_s["median"]
    report = {
        "machine": machine(),
        "W1": {
            "description": f"{args.sagas} sagas of 5 no-op steps, Redis broker, one prefork "
            "worker with 2 processes; plain chain has a Redis result backend",
            "reps": args.reps,
            "saga_seconds": saga_s,
            "chain_seconds": chain_s,
            "ratio_saga_over_chain": ratio,
            "counts": counts,
        },
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"W1  {args.sagas} x 5-step sagas vs plain chains, {args.reps} reps (median, min-max)")
    print(
        f"    plain chain  {chain_s['median']:7.3f} s  ({chain_s['min']:.3f}-{chain_s['max']:.3f})"
    )
    print(f"    celery-saga  {saga_s['median']:7.3f} s  ({saga_s['min']:.3f}-{saga_s['max']:.3f})")
    print(f"    ratio saga/plain: {ratio:.3f}  (target <= 1.2)")
    print(
        f"    per step: {counts['broker_messages_per_step']:.2f} broker messages, "
        f"{counts['store_round_trips_per_step']:.2f} store round trips "
        f"({counts['store_round_trips_per_step_in_workers']:.2f} in workers, "
        f"{counts['store_round_trips_per_saga_in_caller']:.2f} per saga in the caller), "
        f"{counts['store_bytes_written_per_step']:.0f} bytes written"
    )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
