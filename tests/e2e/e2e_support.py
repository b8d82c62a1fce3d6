"""What the end-to-end tests share: environments, worker processes, waiting.

Importable by test modules (a conftest is not: two conftest modules share one name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_saga.backends import SagaBackend

APPS = Path(__file__).parent / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

from scenarios import Scenarios  # noqa: E402
from support import (  # noqa: E402
    BROKER_DB,
    RABBITMQ_URL,
    REDIS_URL,
    STORE_DB,
    STORES,
    poll,
    require,
)
from worker_app import make_app  # noqa: E402


def _environments() -> dict[str, dict[str, Any]]:
    envs: dict[str, dict[str, Any]] = {}
    if "memory" in STORES:
        envs["eager"] = {"eager": True, "store": "memory"}
        envs["eager-propagates"] = {"eager": True, "propagates": True, "store": "memory"}
    for broker in ("redis", "amqp"):
        for store in STORES:
            label = "rabbitmq" if broker == "amqp" else broker
            envs[f"{label}-broker-{store}-store"] = {"broker": broker, "store": store}
    return envs


ENVIRONMENTS = _environments()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, or fail the test after `timeout`."""
    return poll(condition, timeout, pytest.fail, what)


def broker_url(kind: str) -> str:
    if kind == "amqp":
        require(RABBITMQ_URL, 5672, "RabbitMQ")
        return RABBITMQ_URL
    require(REDIS_URL, 6379, "Redis")
    return f"{REDIS_URL}/{BROKER_DB}"


def delete_queues(broker: str, queues: list[str]) -> None:
    """Remove the test's queues from the broker (RabbitMQ keeps them otherwise)."""
    from kombu import Connection

    with Connection(broker) as conn:
        channel = conn.default_channel
        for queue in queues:
            try:
                channel.queue_delete(queue)
            except Exception:
                pass


@dataclass
class Env:
    """One environment the scenario suite runs in."""

    name: str
    app: Celery
    scenarios: Scenarios
    store: SagaBackend
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerProcess:
    """A real `celery worker` process, started and stopped by a test."""

    def __init__(
        self,
        module: str,
        queues: list[str],
        concurrency: int,
        env: dict[str, str],
        logfile: Path,
        pool: str = "prefork",
    ) -> None:
        import redis

        self.ready_key = f"ready-{os.urandom(6).hex()}"
        self._redis = redis.Redis.from_url(f"{REDIS_URL}/{STORE_DB}")
        full_env = {
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
            "SAGA_E2E_READY": f"{REDIS_URL}/{STORE_DB}|{self.ready_key}",
        }
        self.logfile = logfile
        self._log = open(logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module,
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-Q",
                ",".join(queues),
                "-l",
                "info",
                "-n",
                f"{module}-{self.ready_key}@%h",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
            ],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(APPS),
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}; log:\n{self.log()}")
            return bool(self._redis.get(self.ready_key))

        wait_for(ready, timeout, "the worker to start consuming")

    def log(self) -> str:
        self._log.flush()
        return self.logfile.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL the whole process group (the main process and its children)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        self._redis.delete(self.ready_key)
        self._redis.close()


@dataclass
class ProcessSetup:
    """Broker, store and journal of a test with worker processes (Redis for all)."""

    broker: str
    store: str
    journal: str
    journal_prefix: str
    queue: str
    prefix: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "SAGA_E2E_BROKER": self.broker,
            "SAGA_E2E_STORE": self.store,
            "SAGA_E2E_JOURNAL": self.journal,
            "SAGA_E2E_JOURNAL_PREFIX": self.journal_prefix,
            "SAGA_E2E_QUEUE": self.queue,
            **extra,
        }

    def app(self, **kw: Any) -> tuple[Celery, Any]:
        return make_app(
            broker=self.broker,
            store=self.store,
            journal=self.journal,
            queue=self.queue,
            prefix=self.journal_prefix,
            **kw,
        )
