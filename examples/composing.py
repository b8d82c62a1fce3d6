"""Composing sagas: an order with a child payment saga, a conditional gift wrap, a
payment confirmed from outside (the bank's webhook), and a revert when the order
comes back.

A real Celery worker runs in this process on the in-memory broker, so nothing needs
a server: ``python examples/composing.py``. In production the broker is Redis or
RabbitMQ, the store is Redis, PostgreSQL or MongoDB, and the webhook handler is
another process that imports this module.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_saga import Saga, SagaResult, SagaReverted, SagaStatus, saga_step

app = Celery("shop", broker="memory://localhost/")
app.conf.update(
    saga_backend="memory://composing",  # in-process store; use redis://... across machines
    broker_transport_options={"polling_interval": 0.005},
    worker_hijack_root_logger=False,
)
#: What the tasks did, in order: the "services" of this example.
EVENTS: list[str] = []


# -- the payment saga: authorize the card, then capture the amount ------------------------


@app.task(name="payments.void")
def void_authorization(data: dict[str, Any]) -> None:
    EVENTS.append(f"void authorization {data['authorization']}")


@saga_step(compensate=void_authorization)
@app.task(name="payments.authorize")
def authorize_card(order_id: str, amount: float, **_: Any) -> dict[str, Any]:
    EVENTS.append(f"authorize {amount} for {order_id}")
    return {"authorization": f"auth-{order_id}"}


@app.task(name="payments.refund")
def refund(data: dict[str, Any]) -> None:
    EVENTS.append(f"refund {data['capture']}")


@saga_step(compensate=refund)
@app.task(name="payments.capture")
def capture(authorization: str, **_: Any) -> dict[str, Any]:
    EVENTS.append(f"capture {authorization}")
    return {"capture": f"cap-{authorization}"}


payment = Saga("payment", app=app).add_step(authorize_card).add_step(capture)


# -- the order saga ---------------------------------------------------------------------


@app.task(name="stock.release")
def release_stock(data: dict[str, Any]) -> None:
    EVENTS.append(f"release {data['item']}")


@saga_step(compensate=release_stock)
@app.task(name="stock.reserve")
def reserve_stock(item: str, **_: Any) -> dict[str, Any]:
    EVENTS.append(f"reserve {item}")
    return {"item": item}


@app.task(name="gifts.unwrap")
def unwrap(data: dict[str, Any]) -> None:
    EVENTS.append("unwrap")


@saga_step(compensate=unwrap)
@app.task(name="gifts.wrap")
def wrap_gift(**_: Any) -> dict[str, Any]:
    EVENTS.append("wrap as a gift")
    return {"wrapped": True}


@saga_step(no_compensation=True)
@app.task(name="orders.confirm")
def confirm(order_id: str, bank_reference: str, **_: Any) -> dict[str, Any]:
    EVENTS.append(f"confirm {order_id} ({bank_reference})")
    return {"confirmed": True}


order = (
    Saga("order", app=app)
    .add_step(reserve_stock)
    .add_saga(payment)  # a child saga: its own execution, undone as a whole
    .add_step(wrap_gift, when=lambda ctx: ctx.get("gift", False))  # skipped unless a gift
    # the bank's webhook completes it; a confirmation has nothing to undo
    .add_external("bank_confirmation", timeout=timedelta(hours=1), no_compensation=True)
    .add_step(confirm)
)


def webhook(saga_id: str, bank_reference: str) -> bool:
    """What the bank's webhook handler does (in its own process, given the saga id)."""
    handle = SagaResult(saga_id, "memory://composing")
    done = handle.complete_step("bank_confirmation", {"bank_reference": bank_reference})
    if not done:
        print(f"  webhook refused: {done.reason}")  # a repeated webhook: nothing applied
    return done.applied


def main() -> int:
    logging.getLogger("celery").setLevel(logging.CRITICAL)
    logging.getLogger("celery_saga").setLevel(logging.CRITICAL)
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="CRITICAL"
    ):
        result = order.run(order_id="A-7", item="lamp", amount=30.0, gift=True)
        # The saga runs up to the external step and waits there, holding no worker.
        while not (result.execution and result.execution.step(3).lease_owner):
            result.backend.wait(result.saga_id, 0.05)
        print(f"order {result.saga_id}: {result.status.value}, waiting for the bank")
        assert webhook(result.saga_id, "bank-991")
        assert not webhook(result.saga_id, "bank-991")  # the bank retried its webhook
        output = result.get(timeout=30)
        print(f"order completed: confirmed={output['confirmed']}, capture={output['capture']}")
        (child,) = result.backend.list(parent_id=result.saga_id).items
        print(f"  its payment saga {child.saga_id}: {child.status.value}")

        result.revert("the customer returned the lamp")  # undo the whole order
        try:
            result.get(timeout=30)
        except SagaReverted as exc:
            print(f"order reverted: {exc.execution.revert_reason}")
    print("what happened, in order:")
    for event in EVENTS:
        print(f"  {event}")
    child_status = result.backend.get(child.saga_id)
    ok = result.status is SagaStatus.REVERTED and child_status is not None
    return 0 if ok and child_status.status is SagaStatus.REVERTED else 1


if __name__ == "__main__":
    sys.exit(main())
