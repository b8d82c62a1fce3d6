"""End-to-end fixtures: Celery apps on real brokers, with worker threads or processes.

`env` runs the scenario suite in every environment: eager mode (a user's unit
tests), and a real worker (threads, from `celery.contrib.testing.worker`) on a
Redis broker and on a RabbitMQ broker, each with the memory and the Redis store.
No app has a result backend: the state store is the only source of truth.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_saga.backends import SagaBackend
from celery_saga.config import backend_for

APPS = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS))

from scenarios import Journal, Scenarios, build  # noqa: E402
from support import (  # noqa: E402
    BROKER_DB,
    RABBITMQ_URL,
    REDIS_URL,
    SHARED_STORES,
    STORE_DB,
    STORES,
    drop_prefix,
    require,
    state_store,
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop tests that do not apply to the stores under test.

    Tests with worker processes need a store that processes can share; a test
    marked ``only_store(kind)`` runs once, for that store, when it is under test.
    """

    def applies(item: pytest.Item) -> bool:
        if item.get_closest_marker("processes") and not SHARED_STORES:
            return False
        only = item.get_closest_marker("only_store")
        if only is not None:
            param = getattr(item, "callspec", None)
            store = param.params.get("processes") if param else None
            return store == only.args[0]
        return True

    dropped = [item for item in items if not applies(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


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


@pytest.fixture(scope="module", params=list(ENVIRONMENTS))
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    spec = ENVIRONMENTS[request.param]
    tag = os.urandom(4).hex()
    queue = f"e2e-{tag}"
    with state_store(spec["store"], tag, tempfile.gettempdir()) as store:
        if spec.get("eager"):
            app = Celery(f"e2e-{tag}", broker="memory://", set_as_current=False)
            app.conf.update(
                task_always_eager=True,
                task_eager_propagates=bool(spec.get("propagates")),
                saga_backend=store,
                saga_compensation_retry_backoff=0,
            )
            yield Env(request.param, app, build(app, Journal()), backend_for(app))
            return
        broker = broker_url(spec["broker"])
        app = Celery(f"e2e-{tag}", broker=broker, set_as_current=False)
        app.conf.update(
            task_default_queue=queue,
            saga_backend=store,
            saga_compensation_retry_backoff=0.05,
            broker_connection_retry_on_startup=True,
        )
        scenarios = build(app, Journal())
        try:
            with start_worker(
                app,
                pool="threads",
                concurrency=4,
                perform_ping_check=False,
                queues=[queue],
                shutdown_timeout=30,
            ):
                yield Env(request.param, app, scenarios, backend_for(app))
        finally:
            delete_queues(broker, [queue])


# -- worker processes ---------------------------------------------------------------------


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


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; all are stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start(
        module: str, queues: list[str], concurrency: int, env: dict[str, str], pool: str = "prefork"
    ) -> WorkerProcess:
        worker = WorkerProcess(
            module, queues, concurrency, env, tmp_path / f"worker-{len(started)}.log", pool=pool
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


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


@pytest.fixture(params=SHARED_STORES)
def processes(request: pytest.FixtureRequest, unique: str) -> Iterator[ProcessSetup]:
    """Broker (Redis), journal (Redis) and a shared state store for worker processes."""
    require(REDIS_URL, 6379, "Redis")
    prefix = f"p-{unique}:"
    with state_store(request.param, unique, tempfile.gettempdir()) as store:
        assert isinstance(store, str)
        yield ProcessSetup(
            broker=f"{REDIS_URL}/{BROKER_DB}",
            store=store,
            journal=f"{REDIS_URL}/{STORE_DB}",
            journal_prefix=f"{prefix}journal:",
            queue=f"q-{unique}",
            prefix=prefix,
        )
    drop_prefix(REDIS_URL, STORE_DB, prefix)
