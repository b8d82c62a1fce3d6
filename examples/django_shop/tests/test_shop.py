"""The example shop end to end: PostgreSQL, the Redis broker and store, a real worker.

A committed order is carried through by its saga on the worker (which reads and
writes the order in PostgreSQL); a rolled-back one sends no message and leaves no
execution in the saga store.
"""

from __future__ import annotations

import time
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from orders.models import Order
from orders.sagas import order_saga
from orders.services import place_order

from celery_saga import SagaCompensated, SagaResult
from celery_saga.backends.base import SagaBackend
from celery_saga.config import backend_for
from celery_saga.contrib.django import OnCommitRun, run_on_commit

pytestmark = pytest.mark.usefixtures("worker")


def finish(result: SagaResult | None, worker: Any) -> Any:
    """The saga's output; fails with the worker's log if it does not end in time."""
    assert result is not None, "the saga was not sent"
    try:
        return result.get(timeout=60)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\nworker log:\n{worker.log()[-4000:]}")


def received(worker: Any) -> int:
    """How many first steps (one per saga started) the worker has received so far."""
    return worker.log().count("orders.accept[")


def executions(store: SagaBackend) -> set[str]:
    """The ids of every execution of the order saga in the store (this run's prefix)."""
    return {e.saga_id for e in store.list(name=order_saga.name, limit=1000).items}


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


def place_then_abort(started: list[tuple[Order, OnCommitRun]]) -> None:
    """Place an order, then roll the transaction back."""
    with transaction.atomic():
        started.append(place_order("book", Decimal("12.50")))
        raise Abort


def test_the_saga_settings_come_from_django_settings() -> None:
    """CELERY_SAGA_BACKEND reaches celery-saga through Celery's CELERY namespace."""
    assert order_saga.app.conf.saga_backend == settings.CELERY_SAGA_BACKEND
    assert backend_for(order_saga.app) is backend_for(None, settings.CELERY_SAGA_BACKEND)


def test_a_committed_order_is_carried_through_by_its_saga(
    worker: Any, published: list[tuple[str, Any]]
) -> None:
    """POST /orders/: the saga is sent when the view's transaction commits, and completes."""
    response = Client().post("/orders/", {"item": "book", "amount": "12.50"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["saga_id"], "the view's transaction committed, so the saga was sent"
    assert ("orders.accept", settings.CELERY_TASK_DEFAULT_QUEUE) in published
    output = finish(order_saga.result(body["saga_id"]), worker)
    order = Order.objects.get(pk=body["order_id"])
    assert order.status == Order.Status.CONFIRMED
    assert order.payment_ref == output["transaction_id"] == f"txn-{order.pk}"
    execution = backend_for(order_saga.app).find_by_idempotency_key(body["saga_key"])
    assert execution is not None and execution.saga_id == body["saga_id"]
    assert Client().get(f"/orders/{order.pk}/").json()["status"] == "confirmed"


def test_a_rolled_back_order_sends_nothing_and_stores_nothing(
    worker: Any, published: list[tuple[str, Any]]
) -> None:
    """No message, no execution in the store, nothing received by the worker, no order."""
    store = backend_for(order_saga.app)
    before, started = (received(worker), executions(store)), []
    with pytest.raises(Abort):
        place_then_abort(started)
    order, run = started[0]
    assert not run.dispatched and run.error is None
    assert published == []
    assert store.find_by_idempotency_key(run.idempotency_key) is None
    assert not Order.objects.filter(pk=order.pk).exists()
    time.sleep(1.0)  # a message sent anyway would reach the worker by now
    assert (received(worker), executions(store)) == before


def test_only_the_committed_part_of_a_transaction_starts_sagas(
    worker: Any, published: list[tuple[str, Any]]
) -> None:
    """Two orders, the second in a savepoint that rolls back: one saga, sent at COMMIT."""
    dropped: list[tuple[Order, OnCommitRun]] = []
    with transaction.atomic():
        kept, kept_run = place_order("lamp", Decimal("30.00"))
        with pytest.raises(Abort):
            place_then_abort(dropped)  # a nested atomic block: a savepoint
        assert published == [] and not kept_run.dispatched
    assert kept_run.dispatched and not dropped[0][1].dispatched
    finish(kept_run.result, worker)
    assert Order.objects.get(pk=kept.pk).status == Order.Status.CONFIRMED
    store = backend_for(order_saga.app)
    assert store.find_by_idempotency_key(dropped[0][1].idempotency_key) is None


def test_outside_a_transaction_the_saga_is_sent_at_once(
    worker: Any, published: list[tuple[str, Any]]
) -> None:
    """In autocommit the order is committed already: run_on_commit sends during the call."""
    order = Order.objects.create(item="book", amount=Decimal("3.00"))
    run = run_on_commit(order_saga, idempotency_key=order.saga_key, order_id=order.pk)
    assert run.dispatched and published
    finish(run.result, worker)
    assert Order.objects.get(pk=order.pk).status == Order.Status.CONFIRMED


def test_a_declined_payment_cancels_the_order(worker: Any) -> None:
    """The saga compensates: the worker's compensation cancels the order in PostgreSQL."""
    body = Client().post("/orders/", {"item": "piano", "amount": "5000"}).json()
    with pytest.raises(SagaCompensated, match="declined"):
        finish(order_saga.result(body["saga_id"]), worker)
    order = Order.objects.get(pk=body["order_id"])
    assert order.status == Order.Status.CANCELLED and order.payment_ref == ""


def test_the_command_places_an_order_or_rolls_it_back(
    worker: Any, published: list[tuple[str, Any]]
) -> None:
    """``place_order --dry-run`` keeps nothing and sends nothing; without it the order is done."""
    count = Order.objects.count()
    out = StringIO()
    call_command("place_order", "lamp", "9.90", "--dry-run", stdout=out)
    assert "rolled back" in out.getvalue()
    assert published == [] and Order.objects.count() == count
    call_command("place_order", "lamp", "9.90", "--wait", "60", stdout=out)
    assert out.getvalue().rstrip().endswith(": confirmed"), out.getvalue()
    assert published


def test_the_view_refuses_a_bad_order_without_starting_anything(
    published: list[tuple[str, Any]],
) -> None:
    """A bad amount is a 400, before any transaction: no order, no saga."""
    response = Client().post("/orders/", {"item": "book", "amount": "lots"})
    assert response.status_code == 400 and "amount" in response.json()["error"]
    assert published == []
