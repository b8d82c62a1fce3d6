"""End-to-end fixtures: Celery apps on real brokers, with worker threads or processes.

`env` runs the scenario suite in every environment: eager mode (a user's unit
tests), and a real worker (threads, from `celery.contrib.testing.worker`) on a
Redis broker and on a RabbitMQ broker, each with the stores under test.
No app has a result backend: the state store is the only source of truth.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from e2e_support import (
    ENVIRONMENTS,
    Env,
    ProcessSetup,
    WorkerProcess,
    broker_url,
    delete_queues,
)
from kombu.asynchronous import set_event_loop
from scenarios import Journal, build
from support import (
    BROKER_DB,
    REDIS_URL,
    SHARED_STORES,
    STORE_DB,
    drop_prefix,
    require,
    state_store,
)

from celery_saga.config import backend_for


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
        # Each in-process worker needs its own event loop. Celery 5.3 reuses kombu's
        # process-wide hub, which still holds the timer of the worker that made it: a
        # later worker's countdown (ETA) messages would then never fire.
        set_event_loop(None)
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
            set_event_loop(None)
            delete_queues(broker, [queue])


# -- worker processes -----------------------------------------------------------------------


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
