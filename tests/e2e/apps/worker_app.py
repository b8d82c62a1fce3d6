"""The Celery app that end-to-end worker processes run (``celery -A worker_app worker``).

Configured from the environment by the test that starts the process:
``SAGA_E2E_BROKER``, ``SAGA_E2E_STORE`` (state store URL), ``SAGA_E2E_JOURNAL``
(Redis URL of the side-effect journal), ``SAGA_E2E_QUEUE`` (default queue),
``SAGA_E2E_SAGA_QUEUE``, ``SAGA_E2E_ROUTES`` (JSON task_routes) and
``SAGA_E2E_READY`` (Redis URL and key set once the worker consumes).
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from lease_scenarios import build_leases
from scenarios import Journal, build, routing_saga

from celery_saga import UncompensatedStepWarning

# The scenario sagas leave steps uncompensated on purpose; in the test process the
# workspace's pytest settings say the same (a worker process has no pytest settings).
warnings.filterwarnings("ignore", category=UncompensatedStepWarning)


def make_app(
    *,
    broker: str,
    store: str,
    journal: str | None,
    queue: str,
    saga_queue: str | None = None,
    routes: dict[str, Any] | None = None,
    prefix: str = "journal:",
    conf: dict[str, Any] | None = None,
) -> tuple[Celery, Any]:
    """An app with the scenario sagas, as both the tests and the workers build it."""
    app = Celery("e2e", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        saga_backend=store,
        saga_queue=saga_queue,
        task_routes=routes or {},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        saga_compensation_retry_backoff=0.05,
    )
    app.conf.update(conf or {})
    scenarios = build(app, Journal(journal, prefix=prefix))
    scenarios.leases = build_leases(app, scenarios.journal)
    routing = routing_saga(app)
    return app, (scenarios, routing)


if "SAGA_E2E_BROKER" in os.environ:
    app, (scenarios, routing) = make_app(
        broker=os.environ["SAGA_E2E_BROKER"],
        store=os.environ["SAGA_E2E_STORE"],
        journal=os.environ.get("SAGA_E2E_JOURNAL"),
        queue=os.environ["SAGA_E2E_QUEUE"],
        saga_queue=os.environ.get("SAGA_E2E_SAGA_QUEUE") or None,
        routes=json.loads(os.environ.get("SAGA_E2E_ROUTES", "{}")),
        prefix=os.environ.get("SAGA_E2E_JOURNAL_PREFIX", "journal:"),
        conf=json.loads(os.environ.get("SAGA_E2E_CONF", "{}")),
    )

    if os.environ.get("SAGA_E2E_HIDE_SAGAS"):
        # A worker that has the tasks but not the saga definitions (a deployment mistake).
        from celery_saga import registry

        for saga_name in list(registry.registered()):
            registry.unregister(saga_name)

    @worker_ready.connect
    def _announce(**_: Any) -> None:
        ready = os.environ.get("SAGA_E2E_READY")
        if ready:
            import redis

            url, key = ready.rsplit("|", 1)
            redis.Redis.from_url(url).set(key, socket.gethostname(), ex=3600)
