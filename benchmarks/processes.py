"""The processes a benchmark run starts: Celery workers, the drivers of celery-saga 0.1.1
and DBOS (each in its own venv), a MongoDB server, W9's web view servers.

Every process is started in a session of its own and stopped by its process group,
so a worker's prefork children go with it. Logs go to ``benchmarks/.<name>.log``
and are removed when the process ended cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import redis

HERE = Path(__file__).parent
#: How often a caller waiting for a throughput run looks again (the same for every
#: contender; the caller shares the CPUs with the workers, so not too often).
POLL = 0.02


def wait(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> None:
    """Return once `condition()` is true; exit the run if it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of process group `pgid` (Linux)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th field
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _stop(
    proc: subprocess.Popen[bytes], log: IO[bytes] | None, grace: float = 30, keep: bool = False
) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    if log is not None:
        log.close()
        if proc.returncode in (0, -signal.SIGTERM) and not keep:
            Path(log.name).unlink(missing_ok=True)


class Worker:
    """One ``celery worker`` process (prefork, 2 processes by default) for one contender.

    `python` and `app` select the interpreter and the ``-A`` module: this project's
    contenders run ``bench_app`` with the harness's own interpreter, celery-saga
    0.1.1 runs ``orig_app`` with the interpreter of its venv. `pool` is the ``-P`` pool
    (`concurrency` applies to every pool but solo), `prefix` comes before the interpreter
    on the command line (a tool that runs the worker, such as valgrind), and `env` may
    set ``PYTHONPATH`` (by default this folder).
    """

    def __init__(
        self,
        role: str,
        queue: str,
        env: dict[str, str],
        concurrency: int = 2,
        *,
        python: str = sys.executable,
        app: str = "bench_app",
        ready_url: str | None = None,
        pool: str = "prefork",
        prefix: Sequence[str] = (),
        log_name: str | None = None,
    ) -> None:
        self.role = role
        self.ready_key = f"bench:ready:{uuid.uuid4().hex}"
        self.stats = redis.Redis.from_url(
            ready_url or env.get("BENCH_STATS_URL") or os.environ["BENCH_STATS_URL"]
        )
        full = {
            **os.environ,
            "PYTHONPATH": str(HERE),
            **env,
            "BENCH_ROLE": role,
            "BENCH_QUEUE": queue,
            "BENCH_READY_KEY": self.ready_key,
        }
        name = log_name or f".worker-{role}-{queue}.log"
        self.log = open(HERE / name, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *prefix,
                python,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "-P",
                pool,
                *(("-c", str(concurrency)) if pool != "solo" else ()),
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

    def ready(self, timeout: float = 90) -> Worker:
        """Wait until the worker announced it is ready; return it."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"the {self.role} worker exited; see {self.log.name}")
            return bool(self.stats.exists(self.ready_key))

        wait(up, timeout, f"the {self.role} worker", interval=0.05)
        return self

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the worker and its pool processes."""
        return group_cpu_seconds(self.proc.pid)

    def stop(self, keep_log: bool = False, grace: float = 30) -> None:
        """Stop the worker (SIGTERM to its group, SIGKILL after `grace` seconds);
        `keep_log`: even if it ended cleanly, keep its log (something it ran went wrong)."""
        _stop(self.proc, self.log, grace, keep=keep_log)
        self.stats.delete(self.ready_key)


class Driver:
    """A contender's caller in another interpreter, spoken to in JSON lines.

    celery-saga 0.1.1 (`orig_driver`) and DBOS (`dbos_driver`) each run in a venv of
    their own; the harness sends one JSON command per line on the driver's stdin and
    reads one JSON answer per line from its stdout.
    """

    def __init__(self, name: str, python: str, script: str, env: dict[str, str]) -> None:
        self.name = name
        self.log = open(HERE / f".{Path(script).stem.replace('_', '-')}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [python, str(HERE / script)],
            env={**os.environ, **env, "PYTHONPATH": str(HERE)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )

    def call(self, **command: Any) -> dict[str, Any]:
        """Send one command and return its answer; exit the run on an error."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}'s driver exited; see {self.log.name}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise SystemExit(f"{self.name}'s driver failed: {answer['error']}")
        return answer

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the driver process (and its threads)."""
        return group_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Ask the driver to quit, then make sure it did."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        _stop(self.proc, self.log)


class OrigDriver(Driver):
    """celery-saga 0.1.1's caller (`orig_driver`), run by the interpreter of its venv."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        super().__init__("celery-saga 0.1.1", python, "orig_driver.py", env)


class DbosDriver(Driver):
    """DBOS's workflows and caller (`dbos_driver`), run by the interpreter of its venv."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        super().__init__("DBOS", python, "dbos_driver.py", env)


#: Started by `SecantusServer` in a process of its own, so the server's threads do
#: not compete with the harness (the caller) for its interpreter.
_SECANTUS = """
import sys
from secantus import SecantusDBServer
server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=sys.argv[1])
server.start()
print(server.uri, flush=True)
sys.stdin.read()
server.stop()
"""


class SecantusServer:
    """A SecantusDB server (MongoDB wire protocol) on a free port, for the mongodb store."""

    def __init__(self, storage_path: str) -> None:
        self.log = open(HERE / ".secantus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SECANTUS, storage_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("mongodb://"):
            self.stop()
            raise SystemExit(f"SecantusDB did not start; see {self.log.name}")
        self.uri = line

    def stop(self) -> None:
        """Close its stdin (it then stops itself), or terminate it."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        _stop(self.proc, self.log)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebServer:
    """``celery -A bench_app saga web`` on 127.0.0.1 and a free port: uvicorn serving the
    web view of the store `store` (W9), as its users start it."""

    def __init__(self, name: str, store: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(HERE / f".web-{name}.log", "wb")  # noqa: SIM115
        full = {
            **os.environ,
            **env,
            "BENCH_ROLE": "saga",
            "BENCH_STORE": store,
            "PYTHONPATH": str(HERE),
        }
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "bench_app", "saga", "web"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
            ],
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self, timeout: float = 90) -> WebServer:
        """Wait until ``/healthz`` answers 200; return the server."""
        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"the {self.name} web view exited; see {self.log.name}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait(up, timeout, f"the {self.name} web view", interval=0.1)
        return self

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server."""
        return group_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 30 s)."""
        _stop(self.proc, self.log)
