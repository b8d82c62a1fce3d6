"""The JSON API of the shop: place an order (its saga starts once it is saved), read one."""

from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET, require_POST

from orders.models import Order
from orders.services import place_order

#: Amounts must fit the model's DecimalField (10 digits, 2 after the point).
MAX_AMOUNT = Decimal("99999999.99")


@require_POST
def place(request: HttpRequest) -> JsonResponse:
    """POST ``item`` and ``amount``: 201 with the order id and its saga's key and id."""
    item = request.POST.get("item", "").strip()
    try:
        amount = Decimal(request.POST.get("amount", "")).quantize(Decimal("0.01"))
    except InvalidOperation:
        amount = Decimal(0)
    if not item or not Decimal(0) < amount <= MAX_AMOUNT:
        return JsonResponse(
            {"error": f"give an item and an amount between 0.01 and {MAX_AMOUNT}"}, status=400
        )
    with transaction.atomic():
        order, run = place_order(item, amount)
    # The block committed, so the saga was sent: its id is known now.
    body = {"order_id": order.pk, "saga_key": run.idempotency_key, "saga_id": run.saga_id}
    return JsonResponse(body, status=201)


@require_GET
def detail(request: HttpRequest, order_id: int) -> JsonResponse:
    """The order as it is now: its saga moves its status on."""
    order = get_object_or_404(Order, pk=order_id)
    return JsonResponse(_as_json(order))


def _as_json(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.pk,
        "item": order.item,
        "amount": str(order.amount),
        "status": order.status,
        "payment_ref": order.payment_ref,
        "saga_key": order.saga_key,
    }
