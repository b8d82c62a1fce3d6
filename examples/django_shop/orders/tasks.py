"""The steps of the order saga and their compensations: Celery tasks that write orders.

Each step gets the saga's context as keyword arguments and reads the order from the
database, so the order must be committed before the saga starts: `run_on_commit`
sees to that. Steps run at least once, so every write here can be repeated (it sets
values, it never adds to them).
"""

from decimal import Decimal
from typing import Any

from celery import shared_task

from celery_saga import PermanentFailure, StepResponse, saga_step
from orders.models import Order

#: The stand-in payment service declines any amount above this.
PAYMENT_LIMIT = Decimal("1000.00")


@shared_task(name="orders.cancel")
def cancel_order(compensation_data: dict[str, Any]) -> None:
    """Undo `accept_order`: the order is cancelled."""
    Order.objects.filter(pk=compensation_data["order_id"]).update(status=Order.Status.CANCELLED)


@saga_step(compensate=cancel_order)
@shared_task(name="orders.accept")
def accept_order(order_id: int, **_: Any) -> StepResponse:
    """Load the order (committed by now) and mark it processing."""
    order = Order.objects.get(pk=order_id)
    order.status = Order.Status.PROCESSING
    order.save(update_fields=["status"])
    return StepResponse(
        output={"item": order.item, "amount": str(order.amount)},
        compensation_data={"order_id": order_id},
    )


@shared_task(name="orders.refund")
def refund_payment(compensation_data: dict[str, Any] | None) -> None:
    """Undo `charge_payment`: forget the payment (a real shop refunds it here)."""
    if compensation_data:  # a declined payment took nothing, so it has nothing to undo
        Order.objects.filter(
            pk=compensation_data["order_id"], payment_ref=compensation_data["transaction_id"]
        ).update(payment_ref="")


@saga_step(compensate=refund_payment)
@shared_task(name="orders.charge")
def charge_payment(order_id: int, amount: str, **_: Any) -> StepResponse:
    """Charge the order's amount: a stand-in that declines amounts over PAYMENT_LIMIT."""
    if Decimal(amount) > PAYMENT_LIMIT:
        # Fails the step at once (no retries): the saga compensates the steps before it.
        raise PermanentFailure(f"payment of {amount} declined: over the limit of {PAYMENT_LIMIT}")
    transaction_id = f"txn-{order_id}"
    Order.objects.filter(pk=order_id).update(payment_ref=transaction_id)
    return StepResponse(
        output={"transaction_id": transaction_id},
        compensation_data={"order_id": order_id, "transaction_id": transaction_id},
    )


@saga_step(no_compensation=True)
@shared_task(name="orders.confirm")
def confirm_order(order_id: int, **_: Any) -> dict[str, Any]:
    """Mark the order confirmed: the last step, so nothing after it can fail."""
    Order.objects.filter(pk=order_id).update(status=Order.Status.CONFIRMED)
    return {"confirmed": True}
