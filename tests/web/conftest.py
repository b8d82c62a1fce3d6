"""Fixtures of the web view tests: a real store, a real worker, sagas in every state.

Each store under test (CELERY_SAGA_TEST_STORES) gets a Celery app on the Redis broker
with an in-process worker (threads) and a population of executions: completed,
compensated, FAILED (a compensation that fails while a switch is on), RUNNING (waiting
for an external step), a parent with its child. Without the web stack (starlette,
jinja2, prometheus-client, httpx, celery-saga-web) the directory is skipped, saying
why; in CI it fails.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator

import pytest
from support import BROKER_DB, IN_CI, REDIS_URL, STORES, require, state_store

_missing = []
for _module in ("starlette", "jinja2", "prometheus_client", "httpx", "celery_saga_web"):
    try:
        importlib.import_module(_module)
    except ImportError as _exc:
        _missing.append(f"{_module} ({_exc})")
if _missing:
    _why = f"the web view's stack is not installed: {', '.join(_missing)}"
    if IN_CI:
        pytest.fail(f"{_why} (CI=true: `nox -s web` installs it)", pytrace=False)
    pytest.skip(f"{_why}; install packages/celery-saga-web to run these", allow_module_level=True)

from celery import Celery  # noqa: E402
from celery.contrib.testing.worker import start_worker  # noqa: E402
from kombu.asynchronous import set_event_loop  # noqa: E402
from web_sagas import build  # noqa: E402
from web_support import WebEnv  # noqa: E402

from celery_saga.config import backend_for  # noqa: E402


def _delete_queue(broker: str, queue: str) -> None:
    from kombu import Connection

    with Connection(broker) as conn:
        try:
            conn.default_channel.queue_delete(queue)
        except Exception:
            pass


@pytest.fixture(scope="module", params=STORES)
def web_env(request: pytest.FixtureRequest) -> Iterator[WebEnv]:
    """A store, an app with a worker (threads) on the Redis broker, and executions."""
    require(REDIS_URL, 6379, "Redis")
    tag = os.urandom(4).hex()
    queue = f"web-{tag}"
    broker = f"{REDIS_URL}/{BROKER_DB}"
    with state_store(request.param, tag, tempfile.gettempdir()) as store:
        app = Celery(f"web-{tag}", broker=broker, set_as_current=False)
        app.conf.update(
            task_default_queue=queue,
            saga_backend=store,
            saga_compensation_max_retries=0,
            saga_compensation_retry_backoff=0,
            broker_connection_retry_on_startup=True,
        )
        sagas = build(app)
        set_event_loop(None)  # each in-process worker needs its own event loop
        try:
            with start_worker(
                app,
                pool="threads",
                concurrency=4,
                perform_ping_check=False,
                queues=[queue],
                shutdown_timeout=30,
            ):
                env = WebEnv(request.param, app, backend_for(app), sagas)
                _populate(env)
                yield env
        finally:
            set_event_loop(None)
            _delete_queue(broker, queue)


def _populate(env: WebEnv) -> None:
    """One execution in each state the pages must show (ids in `env.ids`)."""
    sagas = env.sagas
    completed = sagas.order.run(order_id="A-1", amount=12.5)
    compensated = sagas.order.run(order_id="A-2", amount=99, decline=True)
    parent = sagas.parent.run(order_id="P-1")
    env.ids["completed"] = completed.saga_id
    env.ids["compensated"] = compensated.saga_id
    env.ids["parent"] = parent.saga_id
    env.wait_status(completed.saga_id, "completed")
    env.wait_status(compensated.saga_id, "compensated")
    finished_parent = env.wait_status(parent.saga_id, "completed")
    child_id = finished_parent.step(1).child_id
    assert child_id is not None
    env.ids["child"] = child_id
    env.ids["failed"] = env.failed_booking()[0].saga_id
    env.ids["running"] = env.waiting_for_approval().saga_id
