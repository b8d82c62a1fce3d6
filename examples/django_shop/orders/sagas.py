"""The order saga: accept the order, charge it, confirm it; if a step fails for good,
the steps done are undone in reverse order (the payment forgotten, the order cancelled).

Workers import this module (``app.autodiscover_tasks(related_name="sagas")`` in
django_shop/celery.py), so they know the saga when its messages arrive.
"""

from celery_saga import Saga
from orders.tasks import accept_order, charge_payment, confirm_order

order_saga = (
    Saga("orders.order_saga")
    .add_step(accept_order)
    .add_step(charge_payment)
    .add_step(confirm_order)
)
