"""The order saga that the FastAPI app (`main.py`) starts: reserve, charge, confirm.

Workers run this module (``celery -A orders worker`` in this folder); the web app
imports it to start sagas and read their state. Both read their settings from the
environment, so they meet on one broker and one state store:

- ``ORDERS_BROKER_URL`` (default ``redis://localhost:6379/0``)
- ``ORDERS_SAGA_BACKEND`` (default ``redis://localhost:6379/1``): the state store; the
  asyncio client waits by notification on Redis and PostgreSQL, by polling elsewhere
- ``ORDERS_QUEUE`` (default ``orders``): the queue of the saga and its steps

The stock and the payment service are stand-ins kept in the worker's memory.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import Celery

from celery_saga import Saga, StepResponse, saga_step

app = Celery("orders", broker=os.environ.get("ORDERS_BROKER_URL", "redis://localhost:6379/0"))
app.conf.update(
    saga_backend=os.environ.get("ORDERS_SAGA_BACKEND", "redis://localhost:6379/1"),
    task_default_queue=os.environ.get("ORDERS_QUEUE", "orders"),
    broker_connection_retry_on_startup=True,
)

#: Items on the shelf, by SKU (a stand-in for the inventory service).
STOCK: dict[str, int] = {"book": 1_000_000, "lamp": 0}
#: Charges by transaction id (a stand-in for the payment service).
CHARGES: dict[str, float] = {}
#: Larger amounts are declined, so the example can show a compensation.
CARD_LIMIT = 1000.0


@app.task(name="orders.release_stock")
def release_stock(compensation_data: dict[str, Any]) -> None:
    """Undo `reserve_stock`: put the items back."""
    STOCK[compensation_data["sku"]] += compensation_data["quantity"]


@saga_step(compensate=release_stock)
@app.task(name="orders.reserve_stock")
def reserve_stock(**order: Any) -> StepResponse:
    """Take the items off the shelf; an item out of stock fails the order for good."""
    sku, quantity = order["sku"], order["quantity"]
    if STOCK.get(sku, 0) < quantity:
        StepResponse.permanent_failure(f"{sku} is out of stock")
    STOCK[sku] -= quantity
    return StepResponse(
        output={"reserved": quantity}, compensation_data={"sku": sku, "quantity": quantity}
    )


@app.task(name="orders.refund")
def refund(compensation_data: dict[str, Any]) -> None:
    """Undo `charge`: give the money back."""
    CHARGES.pop(compensation_data["transaction_id"], None)


@saga_step(compensate=refund)
@app.task(name="orders.charge")
def charge(**order: Any) -> StepResponse:
    """Charge the card; an amount over the limit is declined for good."""
    if order["amount"] > CARD_LIMIT:
        StepResponse.permanent_failure(f"card declined for {order['amount']}")
    transaction_id = f"txn-{uuid.uuid4().hex[:12]}"
    CHARGES[transaction_id] = order["amount"]
    return StepResponse(
        output={"transaction_id": transaction_id},
        compensation_data={"transaction_id": transaction_id},
    )


@app.task(name="orders.confirm")
def confirm(**order: Any) -> dict[str, Any]:
    """Tell the customer; nothing to undo."""
    return {"confirmation": f"order {order['order_id']} is on its way"}


order_saga = (
    Saga("api_order", app=app)
    .add_step(reserve_stock)
    .add_step(charge)
    .add_step(confirm, no_compensation=True)
)
