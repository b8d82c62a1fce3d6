"""`celery_saga.contrib.django.run_on_commit`, with a stand-in saga that records its starts.

These run Django's real transactions on PostgreSQL but need no broker and no worker:
the stand-in's ``run()`` is where the real saga would send its first message, so
"called" means "sent" and "not called" means nothing left the process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import transaction
from django.utils.connection import ConnectionDoesNotExist
from orders.models import Order

from celery_saga import StepOutputError
from celery_saga.contrib.django import OnCommitRun, run_on_commit


class StandInSaga:
    """Has what run_on_commit uses of a saga (`name`, `run`); records each start."""

    name = "stand_in_saga"

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def run(self, *, idempotency_key: str | None = None, queue: str | None = None, **input: Any):
        self.calls.append({"idempotency_key": idempotency_key, "queue": queue, **input})
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(saga_id=f"saga-{len(self.calls)}")


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


def start_then_abort(saga: StandInSaga, started: list[OnCommitRun], **kw: Any) -> None:
    """run_on_commit inside a transaction that then rolls back."""
    with transaction.atomic():
        started.append(run_on_commit(saga, **kw))
        raise Abort


def test_inside_a_transaction_the_saga_is_sent_after_commit() -> None:
    """Nothing is sent while the block runs; the saga is sent once, when it commits."""
    saga = StandInSaga()
    with transaction.atomic():
        run = run_on_commit(saga, order_id=1, queue="orders")
        assert saga.calls == []
        assert not run.dispatched and run.saga_id is None and run.result is None
    assert saga.calls == [
        {"idempotency_key": run.idempotency_key, "queue": "orders", "order_id": 1}
    ]
    assert run.dispatched and run.saga_id == "saga-1" and run.error is None


def test_on_rollback_nothing_is_sent() -> None:
    """A block that rolls back sends nothing, ever."""
    saga, started = StandInSaga(), []
    with pytest.raises(Abort):
        start_then_abort(saga, started, order_id=2)
    assert saga.calls == []
    assert not started[0].dispatched and started[0].error is None
    assert "waiting for commit" in repr(started[0])


def test_a_rolled_back_savepoint_drops_only_its_own_start() -> None:
    """Starts made in a savepoint that rolls back are dropped; the outer one is sent."""
    saga, dropped = StandInSaga(), []
    with transaction.atomic():
        kept = run_on_commit(saga, order_id=3)
        with pytest.raises(Abort):
            start_then_abort(saga, dropped, order_id=4)  # a nested atomic: a savepoint
    assert [call["order_id"] for call in saga.calls] == [3]
    assert kept.dispatched and not dropped[0].dispatched


def test_outside_a_transaction_it_is_sent_at_once() -> None:
    """In autocommit there is nothing to wait for: the saga is sent during the call."""
    saga = StandInSaga()
    run = run_on_commit(saga, order_id=5)
    assert run.dispatched and saga.calls[0]["order_id"] == 5


def test_using_names_the_database_whose_commit_counts() -> None:
    """`using` is the alias passed to on_commit; an unknown alias fails at the call."""
    saga = StandInSaga()
    with transaction.atomic(using="default"):
        run = run_on_commit(saga, using="default", order_id=6)
        assert not run.dispatched
    assert run.dispatched and run.using == "default"
    with pytest.raises(ConnectionDoesNotExist):
        run_on_commit(saga, using="no-such-database", order_id=7)
    assert len(saga.calls) == 1


def test_the_input_is_checked_and_copied_at_the_call() -> None:
    """A non-JSON input fails inside the transaction; later changes do not reach the saga."""
    saga = StandInSaga()
    # SagaInputError where celery-saga has it, a StepOutputError subclass
    with pytest.raises(StepOutputError, match="stand_in_saga"):
        run_on_commit(saga, amount=Decimal("9.99"))
    items = ["book"]
    with transaction.atomic():
        run_on_commit(saga, items=items)
        items.append("lamp")
    assert saga.calls[0]["items"] == ["book"]


def test_every_start_has_an_idempotency_key() -> None:
    """A given key is used as is; without one a fresh key is made; a bad key fails at once."""
    saga = StandInSaga()
    given = run_on_commit(saga, idempotency_key="order-42", order_id=42)
    made = [run_on_commit(saga, order_id=n) for n in (43, 44)]
    assert given.idempotency_key == "order-42" == saga.calls[0]["idempotency_key"]
    assert all(len(run.idempotency_key) == 32 for run in made)
    assert made[0].idempotency_key != made[1].idempotency_key
    with pytest.raises(ValueError, match="idempotency_key"):
        run_on_commit(saga, idempotency_key="", order_id=45)
    with pytest.raises(ValueError, match="queue"):
        run_on_commit(saga, queue="", order_id=46)


def test_a_send_that_fails_after_commit_raises_and_the_data_stays_committed() -> None:
    """As Django does for any on_commit callback: the error leaves the block, after COMMIT."""
    saga, started = StandInSaga(fail=ConnectionError("broker down")), []

    def place() -> None:
        with transaction.atomic():
            Order.objects.create(item="book", amount=Decimal("1.00"), saga_key="fail-after-commit")
            started.append(run_on_commit(saga, idempotency_key="fail-after-commit"))

    with pytest.raises(ConnectionError, match="broker down"):
        place()
    assert Order.objects.filter(saga_key="fail-after-commit").exists()
    assert isinstance(started[0].error, ConnectionError) and not started[0].dispatched
    assert "failed" in repr(started[0])


def test_robust_logs_a_failed_send_and_keeps_its_error(caplog: pytest.LogCaptureFixture) -> None:
    """With robust=True the block ends normally; the log says how to start the saga again."""
    saga = StandInSaga(fail=ConnectionError("broker down"))
    with caplog.at_level(logging.ERROR, logger="celery_saga.contrib.django"), transaction.atomic():
        run = run_on_commit(saga, robust=True, idempotency_key="robust-1")
    assert isinstance(run.error, ConnectionError)
    assert "'robust-1'" in caplog.text and "run it again" in caplog.text


def test_celery_saga_works_without_django() -> None:
    """Django stays optional: with it unimportable, celery_saga and its contrib package load.

    (Django cannot just be looked for in sys.modules: kombu imports a part of it
    whenever it is installed.)
    """
    code = (
        "import sys; sys.modules['django'] = None; "  # any `import django` now fails
        "import celery_saga, celery_saga.contrib; "
        "assert 'celery_saga.contrib.django' not in sys.modules"
    )
    # Without DJANGO_SETTINGS_MODULE: with it, Celery's own Django fixup imports Django.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
