"""``python manage.py place_order ITEM AMOUNT``: place an order from the command line."""

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from celery_saga import SagaCompensated
from orders.services import place_order


class Command(BaseCommand):
    help = (
        "Place an order; its saga is sent when the order is committed. With --dry-run "
        "the transaction rolls back: no order is kept and no saga is sent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("item")
        parser.add_argument("amount", type=Decimal)
        parser.add_argument(
            "--dry-run", action="store_true", help="roll back: keep no order, send no saga"
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="wait that long for the saga to finish, then print the order's status",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            order, run = place_order(options["item"], options["amount"])
            if options["dry_run"]:
                transaction.set_rollback(True)
        if run.result is None:
            self.stdout.write(f"rolled back: order {order.pk} not kept, its saga not sent")
            return
        self.stdout.write(f"order {order.pk} placed; saga {run.saga_id} sent")
        if options["wait"]:
            try:
                run.result.get(timeout=options["wait"])
            except SagaCompensated as exc:
                self.stdout.write(f"saga compensated: {exc}")
            order.refresh_from_db()
            self.stdout.write(f"order {order.pk}: {order.status}")
