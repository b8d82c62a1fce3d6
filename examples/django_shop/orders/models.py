"""An order, and the key of the saga that processes it."""

import uuid

from django.db import models


def new_saga_key() -> str:
    """A fresh idempotency key for an order's saga (random, so never reused)."""
    return uuid.uuid4().hex


class Order(models.Model):
    """An order; its saga moves it from NEW to CONFIRMED, or to CANCELLED.

    `saga_key` is the idempotency key the saga is started with: saved with the order
    in the same transaction, it finds the execution later, and starting the saga
    again with it (after a crash between commit and send) is safe.
    """

    class Status(models.TextChoices):
        NEW = "new"
        PROCESSING = "processing"
        CONFIRMED = "confirmed"
        CANCELLED = "cancelled"

    item = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    payment_ref = models.CharField(max_length=100, blank=True, default="")
    saga_key = models.CharField(max_length=255, unique=True, default=new_saga_key)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk}: {self.item} ({self.amount}), {self.status}"
