"""The order saga of the README: validate, charge and reserve in parallel, confirm.

Each step is an ordinary Celery task; `@saga_step` names its compensation. The
payment "service" and the inventory "service" here are dicts, so the example runs
anywhere; in production they are calls to other systems.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_saga import Saga, StepResponse, saga_step

app = Celery("orders", broker="memory://localhost/")
app.conf.update(
    saga_backend="memory://demo",  # in-process store; use redis://... across machines
    broker_transport_options={"polling_interval": 0.005},  # the in-memory broker polls
    worker_hijack_root_logger=False,
)

LEDGER: dict[str, float] = {}
STOCK: dict[str, int] = {"book": 3, "lamp": 0}


@app.task(name="orders.validate")
def validate_order(**order: Any) -> dict[str, Any]:
    """Check the order; nothing to undo."""
    if order["amount"] <= 0:
        raise ValueError("amount must be positive")
    return {"validated": True}


@app.task(name="orders.refund")
def refund_payment(compensation_data: dict[str, Any]) -> None:
    """Undo `charge_payment`."""
    LEDGER.pop(compensation_data["transaction_id"], None)


@saga_step(compensate=refund_payment)
@app.task(name="orders.charge")
def charge_payment(**order: Any) -> StepResponse:
    """Take the money; the compensation gets what it needs to give it back."""
    txn = f"txn-{order['order_id']}"
    LEDGER[txn] = order["amount"]
    return StepResponse(
        output={"transaction_id": txn},
        compensation_data={"transaction_id": txn, "amount": order["amount"]},
    )


@app.task(name="orders.release")
def release_stock(compensation_data: dict[str, Any]) -> None:
    """Undo `reserve_inventory`."""
    STOCK[compensation_data["item"]] += 1


@saga_step(compensate=release_stock)
@app.task(name="orders.reserve")
def reserve_inventory(**order: Any) -> dict[str, Any]:
    """Hold one item, or fail for good when none is left."""
    item = order["item"]
    if STOCK.get(item, 0) <= 0:
        raise RuntimeError(f"{item!r} is out of stock")
    STOCK[item] -= 1
    return {"item": item, "reserved": True}


@saga_step(no_compensation=True)
@app.task(name="orders.confirm")
def send_confirmation(**order: Any) -> dict[str, Any]:
    """Tell the customer; runs only when everything else succeeded."""
    return {"confirmation": f"Order {order['order_id']} confirmed ({order['transaction_id']})"}


order_saga = (
    Saga("order_saga")
    .add_step(validate_order, no_compensation=True)
    .add_parallel(charge_payment, reserve_inventory)
    .add_step(send_confirmation)
)
