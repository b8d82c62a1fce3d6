"""W11: Redis server time per saga step, this version's Redis store against 0.4.0's.

Why: an issue asks that the Redis server time per step of celery-saga-redis be at most
half of 0.4.0's (commit 040c323 of this repository; no PyPI release), so the figure
comes from the harness: both versions in one run, alternating, median and spread.

How: each version has a private ``redis-server`` (a free port, no persistence) that
holds only its state store; the broker stays on the shared Redis. In each repetition,
FLUSHALL and CONFIG RESETSTAT on that server, then N sagas of 5 no-op steps through
that version's worker (prefork, 2 processes) and caller (this version: the harness;
0.4.0: `server_time_driver` in the baseline venv), every saga awaited with ``get()``;
then ``INFO commandstats`` (scripts' time and calls, every other command's time) and
``INFO cpu`` (the server's CPU, as a difference). Redis 7 counts a command a script
calls both in its own statistics and in the script's time; an untimed pass before
the repetitions, with the slowlog recording every command, says which share of each
command's time its clients sent outside scripts, so the store's time per step is the
scripts' time plus that share of the other commands' time.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from processes import Driver, Worker, free_port, wait
from workloads import alternate, ratio, summary

HERE = Path(__file__).parent
STEPS = 5
#: The baseline: celery-saga-core and celery-saga-redis at this commit are 0.4.0.
BASELINE_COMMIT = "040c323"
#: Keys of the two contenders in results.json.
NOW, BASELINE = "redis-now", "redis-0.4.0"
#: The target of the issue: this version's script time per step over 0.4.0's.
TARGET = ("<=", 0.5)
#: The name of the harness's own connection to a private server: its commands (and
#: those of `CONTROL`) are not the store's work.
CONTROL_NAME = "bench-w11"
CONTROL = ("flushall", "config", "info", "slowlog", "client|setname", "ping")
SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro")
#: A port other helpers' private servers use: never picked.
TAKEN_PORTS = (6390,)
WARM_UP = 20
#: Sagas of the untimed pass with the slowlog on (each keeps its arguments in memory).
SPLIT_SAGAS = 100


class PrivateRedis:
    """A ``redis-server`` of its own on a free port, without persistence, for one store."""

    def __init__(self, name: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("W11 needs redis-server on PATH (it starts private servers)")
        port = free_port()
        while port in TAKEN_PORTS:
            port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log = open(HERE / f".redis-w11-{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = redis.Redis.from_url(self.url, client_name=CONTROL_NAME)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"redis-server did not start; see {self.log.name}")
            try:
                return bool(self.client.ping())
            except redis.ConnectionError:
                return False

        wait(up, 30, "the private redis-server", interval=0.05)

    def stop(self) -> None:
        """Stop the server; its log goes when it ended cleanly."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.proc.returncode in (0, -15):
            Path(self.log.name).unlink(missing_ok=True)


def _base(command: str) -> str:
    """``script|load`` and ``SCRIPT LOAD ...`` both as ``script``."""
    return command.split("|", 1)[0].split(" ", 1)[0].lower()


def _control(command: str) -> bool:
    return command in CONTROL or _base(command) in CONTROL


def outside_shares(server: PrivateRedis, run: Callable[[int], Any], n: int) -> dict[str, float]:
    """Run `n` sagas with the slowlog recording every command; per command, the share of
    its time sent by clients (not called by a script: the slowlog's ``?:0`` client)."""
    client = server.client
    client.config_set("slowlog-max-len", 1_000_000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    try:
        run(n)
        settle(client)
        entries = client.slowlog_get(-1)
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)  # Redis's default
        client.slowlog_reset()
    outside: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for entry in entries:
        if _text(entry.get("client_name")) == CONTROL_NAME:
            continue
        name = _base(_text(entry["command"]))
        total[name] += int(entry["duration"])
        if _text(entry.get("client_address")) != "?:0":
            outside[name] += int(entry["duration"])
    return {name: outside[name] / usec if usec else 1.0 for name, usec in total.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _store_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not _control(k[len("cmdstat_") :]))


def settle(client: redis.Redis, quiet: float = 0.2, limit: float = 5.0) -> None:
    """Wait until the store sends no more commands (what follows the last ``get()``)."""
    deadline = time.monotonic() + limit
    calls = _store_calls(client)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _store_calls(client)
        if now == calls:
            return
        calls = now


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Version:
    """One version of the Redis store: its server, its worker and its caller."""

    key: str
    label: str
    server: PrivateRedis
    worker: Worker
    #: Runs N sagas, each awaited with ``get()``: (seconds, sagas that failed).
    run: Callable[[int], tuple[float, int]]
    versions: dict[str, Any] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)


def measure(version: Version, n: int) -> dict[str, float]:
    """One repetition on an empty, freshly counted server: the figures per step."""
    client = version.server.client
    client.flushall()
    client.config_resetstat()
    cpu = _cpu(client)
    seconds, failed = version.run(n)
    settle(client)
    used = _cpu(client) - cpu
    stats = {k[len("cmdstat_") :]: v for k, v in client.info("commandstats").items()}
    script_usec = sum(int(stats[name]["usec"]) for name in SCRIPTS if name in stats)
    script_calls = sum(int(stats[name]["calls"]) for name in SCRIPTS if name in stats)
    outside_usec = sum(
        int(v["usec"]) * version.shares.get(_base(name), 1.0)
        for name, v in stats.items()
        if name not in SCRIPTS and not _control(name)
    )
    steps = n * STEPS
    return {
        "seconds": seconds,
        "failed": failed,
        "script_us_per_step": script_usec / steps,
        "script_calls_per_step": script_calls / steps,
        "us_per_script_call": script_usec / script_calls if script_calls else 0.0,
        "outside_us_per_step": outside_usec / steps,
        "store_us_per_step": (script_usec + outside_usec) / steps,
        "server_cpu_us_per_step": used * 1e6 / steps,
    }


FIGURES = (
    "script_us_per_step",
    "script_calls_per_step",
    "us_per_script_call",
    "outside_us_per_step",
    "store_us_per_step",
    "server_cpu_us_per_step",
    "seconds",
)


def _show(figures: dict[str, float]) -> str:
    text = (
        f"scripts {figures['script_us_per_step']:6.1f} us/step "
        f"({figures['script_calls_per_step']:.2f} calls, {figures['us_per_script_call']:.1f} "
        f"us each); store {figures['store_us_per_step']:6.1f} us/step; server CPU "
        f"{figures['server_cpu_us_per_step']:6.1f} us/step; {figures['seconds']:.2f} s"
    )
    return text + (f"  FAILED: {int(figures['failed'])}" if figures["failed"] else "")


def _in_process(app: Any, timeout: float) -> Callable[[int], tuple[float, int]]:
    """This version's caller: the harness, with `bench_app`'s ``five`` saga."""

    def run(n: int) -> tuple[float, int]:
        started = time.perf_counter()
        results = [app.five.run(i=i) for i in range(n)]
        failed = 0
        for result in results:
            try:
                result.get(timeout=timeout)
            except Exception:  # a failed or unfinished saga: counted and reported
                failed += 1
        return time.perf_counter() - started, failed

    return run


def _by_driver(driver: Driver, timeout: float) -> Callable[[int], tuple[float, int]]:
    """0.4.0's caller: `server_time_driver`, in the baseline venv."""

    def run(n: int) -> tuple[float, int]:
        answer = driver.call(op="run", n=n, timeout=timeout)
        return float(answer["seconds"]), int(answer["failed"])

    return run


def workload(
    *,
    n: int,
    reps: int,
    timeout: float,
    broker: str,
    env: dict[str, str],
    queue: Callable[[str], str],
    baseline_python: str | None,
) -> dict[str, Any]:
    """W11's section of results.json: both versions alternating, `reps` repetitions.

    `env` is the workers' environment, `queue(key)` names a contender's queue; without
    `baseline_python` (a venv with 0.4.0), this version runs alone, without ratios.
    """
    import importlib.metadata

    from bench_app import build

    from celery_saga.config import backend_for

    with contextlib.ExitStack() as stack:
        versions: list[Version] = []

        def start(key: str, python: str | None) -> tuple[PrivateRedis, Worker]:
            server = PrivateRedis(key)
            stack.callback(server.stop)
            worker_env = {**env, "BENCH_BROKER": broker, "BENCH_STORE": server.url}
            worker = Worker("saga", queue(key), worker_env, python=python or sys.executable)
            stack.callback(worker.stop)
            return server, worker

        server, worker = start(NOW, None)
        app = build("saga", queue(NOW), server.url, broker)
        stack.callback(backend_for(app.app).close)
        now = {p: importlib.metadata.version(p) for p in ("celery-saga-core", "celery-saga-redis")}
        label = f"celery-saga-redis {now['celery-saga-redis']} (this version)"
        versions.append(Version(NOW, label, server, worker, _in_process(app, timeout), now))
        if baseline_python:
            server, worker = start(BASELINE, baseline_python)
            driver_env = {
                **env,
                "BENCH_BROKER": broker,
                "BENCH_STORE": server.url,
                "BENCH_QUEUE": queue(BASELINE),
                "BENCH_ROLE": "saga",
            }
            driver = Driver(
                "celery-saga-redis 0.4.0", baseline_python, "server_time_driver.py", driver_env
            )
            stack.callback(driver.stop)
            label = f"celery-saga-redis 0.4.0 (commit {BASELINE_COMMIT})"
            run = _by_driver(driver, timeout)
            versions.append(
                Version(BASELINE, label, server, worker, run, driver.call(op="versions"))
            )
        else:
            print("  no --baseline-python: celery-saga-redis 0.4.0 is left out of W11", flush=True)
        for version in versions:
            version.worker.ready()
        for version in versions:
            version.run(WARM_UP)
            version.shares = outside_shares(version.server, version.run, min(n, SPLIT_SAGAS))
        results, orders = alternate("W11", versions, reps, lambda v, _: measure(v, n), _show)

    values = {key: {f: [r[f] for r in runs] for f in FIGURES} for key, runs in results.items()}
    section: dict[str, Any] = {
        "description": (
            f"{n} sagas of 5 no-op steps per repetition through each version's own worker "
            "(prefork, 2 processes) and caller (every saga awaited with get()), each version's "
            "state store alone on a private redis-server (no persistence; the broker on the "
            "shared Redis), emptied (FLUSHALL) and its statistics reset before each "
            "repetition: the server time of the store's Lua scripts per step (INFO "
            "commandstats: EVALSHA), their calls per step and time per call, the store's "
            "time per step (the scripts plus the commands sent outside scripts), and the "
            "server's CPU per step (INFO cpu); this version against celery-saga-redis 0.4.0 "
            f"(celery-saga-core and celery-saga-redis at commit {BASELINE_COMMIT})"
        ),
        "sagas": n,
        "steps": n * STEPS,
        "reps": reps,
        "orders": orders,
        "baseline": {"commit": BASELINE_COMMIT, "ran": baseline_python is not None},
        "contenders": {
            v.key: {
                "label": v.label,
                "versions": v.versions,
                "outside_shares": {k: round(s, 4) for k, s in sorted(v.shares.items())},
                "failed": [int(r["failed"]) for r in results[v.key]],
                **{f: summary(values[v.key][f]) for f in FIGURES},
            }
            for v in versions
        },
        "ratios": [],
    }
    if BASELINE in values:
        for figure in ("script_us_per_step", "server_cpu_us_per_step", "store_us_per_step"):
            per_key = {key: values[key][figure] for key in values}
            entry = ratio("W11", NOW, BASELINE, per_key, figure)
            if figure == "script_us_per_step":
                op, limit = TARGET
                entry["target"] = {"op": op, "value": limit}
                entry["ok"] = entry["median"] <= limit
            section["ratios"].append(entry)
    return section
