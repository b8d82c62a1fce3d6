"""What the web view tests share: the environment of one store, waiting, page parsing.

Importable by test modules (a conftest is not: two conftest modules share one name).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from support import poll
from web_sagas import WebSagas

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from celery_saga import SagaResult
from celery_saga.backends import SagaBackend
from celery_saga.models import SagaExecution, SagaStatus, StepStatus
from celery_saga_web import create_app

HTML = {"accept": "text/html"}
_ROW_ID = re.compile(r'<td class="id"><a href="/sagas/([0-9a-f-]{36})">')


def listed(body: str) -> list[str]:
    """The saga ids of a list page's rows, in order."""
    return _ROW_ID.findall(body)


TOKEN = "operator-token-for-tests"
WAIT = 30.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll until truthy; fail the test after `timeout` seconds."""
    return poll(condition, timeout, pytest.fail, what)


@dataclass
class WebEnv:
    """One store under test, its app and worker, and the executions made on it."""

    kind: str
    app: Celery
    store: SagaBackend
    sagas: WebSagas
    ids: dict[str, str] = field(default_factory=dict)

    def status(self, saga_id: str) -> SagaStatus:
        execution = self.store.get(saga_id)
        assert execution is not None
        return execution.status

    def wait_status(self, saga_id: str, status: str) -> SagaExecution:
        """Wait until the execution has `status`; return it."""

        def reached() -> SagaExecution | None:
            execution = self.store.get(saga_id)
            return execution if execution and execution.status.value == status else None

        found: SagaExecution = wait_for(reached, f"saga {saga_id} to be {status}")
        return found

    def waiting_for_approval(self) -> SagaResult:
        """An approval saga RUNNING, its external step waiting."""
        result = self.sagas.approval.run(order_id="W-1")

        def waiting() -> bool:
            execution = self.store.get(result.saga_id)
            return bool(execution and execution.step(1).status is StepStatus.RUNNING)

        wait_for(waiting, f"saga {result.saga_id} to wait for its external step")
        return result

    def failed_booking(self) -> tuple[SagaResult, str]:
        """A booking left FAILED (its compensation fails while its switch is on)."""
        key = f"bank-down-{os.urandom(4).hex()}"
        self.sagas.switches.set(key, True)
        result = self.sagas.booking.run(booking=key)
        self.wait_status(result.saga_id, "failed")
        return result, key

    def client(self, *, allow_actions: bool = False, token: str | None = None) -> TestClient:
        """An HTTP client of a web app on this store."""
        app = create_app(self.store, celery_app=self.app, allow_actions=allow_actions, token=token)
        return TestClient(app, raise_server_exceptions=False)

    def snapshot(self) -> dict[str, Any]:
        """Every execution of this env's sagas as stored (to check that nothing changed)."""
        found: dict[str, Any] = {}
        for name in self.sagas.names():
            for summary in self.store.list(name=name, limit=1000).items:
                execution = self.store.get(summary.saga_id)
                assert execution is not None
                found[summary.saga_id] = execution.to_dict()
        return found
