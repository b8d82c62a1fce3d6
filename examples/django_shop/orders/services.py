"""Placing an order: the row and the start of its saga, in one transaction."""

from decimal import Decimal

from celery_saga.contrib.django import OnCommitRun, run_on_commit
from orders.models import Order
from orders.sagas import order_saga


def place_order(item: str, amount: Decimal) -> tuple[Order, OnCommitRun]:
    """Save a new order; its saga is sent when the surrounding transaction commits.

    Call it inside ``transaction.atomic()``: if the transaction rolls back, the order
    never existed and its saga is never sent. The saga is started with the order's
    `saga_key` as idempotency key, so it can be found (or safely started again) later.
    """
    order = Order.objects.create(item=item, amount=amount)
    run = run_on_commit(order_saga, idempotency_key=order.saga_key, order_id=order.pk)
    return order, run
