"""The README's quick start, complete: every name it uses is defined here.

Start a worker and run one order (Redis on localhost, as in the README)::

    pip install celery-saga[redis]
    celery -A shop worker          # in this folder
    python shop.py                 # in another terminal

The payment service and the stock here are stand-ins kept in the worker's memory;
in production they are calls to other systems. ``CELERY_BROKER_URL`` (read by Celery
itself) and ``SHOP_SAGA_BACKEND`` point the app at another broker or state store:
the project's install check runs this file that way for each store extra.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from celery import Celery

from celery_saga import Saga, StepResponse, saga_step


class _Payments:
    """A stand-in payment service: charges kept in a dict, refunds remove them."""

    class Transaction:
        def __init__(self, id: str) -> None:
            self.id = id

    def __init__(self) -> None:
        self.charges: dict[str, float] = {}
        self._ids = itertools.count(1)

    def charge(self, order_id: str, amount: float) -> _Payments.Transaction:
        txn = self.Transaction(f"txn-{order_id}-{next(self._ids)}")
        self.charges[txn.id] = amount
        return txn

    def refund(self, transaction_id: str, amount: float) -> None:
        self.charges.pop(transaction_id, None)


payments = _Payments()
STOCK: dict[str, int] = {"book": 3, "lamp": 0}

app = Celery("shop", broker="redis://localhost:6379/0")
app.conf.saga_backend = "redis://localhost:6379/1"  # where executions are kept
app.conf.saga_backend = os.environ.get("SHOP_SAGA_BACKEND", app.conf.saga_backend)
app.conf.task_default_queue = os.environ.get("SHOP_QUEUE", "celery")


@app.task
def validate_order(**order: Any) -> dict[str, Any]:
    """Check the order; nothing to undo."""
    if order["amount"] <= 0:
        raise ValueError("amount must be positive")
    return {"validated": True}


@app.task
def refund_payment(compensation_data):  # type: ignore[no-untyped-def]
    payments.refund(compensation_data["transaction_id"], compensation_data["amount"])


@saga_step(compensate=refund_payment)
@app.task
def charge_payment(**order):  # type: ignore[no-untyped-def]
    txn = payments.charge(order["order_id"], order["amount"])
    return StepResponse(
        output={"transaction_id": txn.id},
        compensation_data={"transaction_id": txn.id, "amount": order["amount"]},
    )


@app.task
def release_stock(compensation_data: dict[str, Any]) -> None:
    """Undo `reserve_inventory`."""
    STOCK[compensation_data["item"]] += 1


@saga_step(compensate=release_stock)
@app.task
def reserve_inventory(**order: Any) -> dict[str, Any]:
    """Hold one item, or fail for good when none is left."""
    item = order.get("item", "book")
    if STOCK.get(item, 0) <= 0:
        raise RuntimeError(f"{item!r} is out of stock")
    STOCK[item] -= 1
    return {"item": item, "reserved": True}


@app.task
def send_confirmation(**order: Any) -> dict[str, Any]:
    """Tell the customer; runs only when everything else succeeded."""
    return {"confirmation": f"order {order['order_id']} confirmed"}


order_saga = (
    Saga("order_saga")
    .add_step(validate_order, no_compensation=True)
    .add_parallel(charge_payment, reserve_inventory)  # run side by side
    .add_step(send_confirmation, no_compensation=True)
)

from celery_saga import parallelize, saga, step  # noqa: E402


@saga("order_saga_fn")
def order_saga_fn(input):  # type: ignore[no-untyped-def]
    order = step(validate_order, input, no_compensation=True)
    payment, stock = parallelize(step(charge_payment, order), step(reserve_inventory, order))  # noqa: RUF059
    step(send_confirmation, payment, no_compensation=True)
    return payment  # what result.get() returns


if __name__ == "__main__":
    result = order_saga.run(order_id="abc-123", amount=99.99, idempotency_key="order-abc-123")
    output = result.get(timeout=30)  # the final context; raises SagaCompensated if rolled back
    fn_output = order_saga_fn.run(order_id="abc-124", amount=5.0).get(timeout=30)
    print(json.dumps({"order_saga": output, "order_saga_fn": fn_output}, sort_keys=True))
