"""The Celery app of the asyncio tests: an order saga of three steps on a real worker.

Worker processes run it (``celery -A aio_app worker``, configured by ``AIO_BROKER``,
``AIO_STORE`` and ``AIO_QUEUE``; ``AIO_READY`` is ``<redis url>|<key>``, set once the
worker consumes); the tests build the same app in their own process with `make_app`.
Each step sleeps for the order's ``pause`` seconds (default 0), so a test can watch
the steps go by; an order whose ``fail`` names a step fails there for good.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from celery_saga import Saga, StepResponse


def make_app(
    *, broker: str, store: Any, queue: str, name: str = "aio_order"
) -> tuple[Celery, Saga]:
    """An app on `broker` and `store` (a URL or a store object) with the order saga `name`.

    Its tasks are not shared (``shared=False``): each call makes an app of its own, and
    a shared task would be added to every app made afterwards in the process.
    """
    app = Celery("aio", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        saga_backend=store,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        saga_compensation_retry_backoff=0.05,
    )

    def work(step: str, order: dict[str, Any]) -> None:
        time.sleep(float(order.get("pause", 0)))
        if order.get("fail") == step:
            StepResponse.permanent_failure(f"{step} refused order {order['order_id']}")

    @app.task(name="aio.release", shared=False)
    def release(compensation_data: dict[str, Any]) -> None:
        """Undo `reserve`."""

    @app.task(name="aio.reserve", shared=False)
    def reserve(**order: Any) -> StepResponse:
        work("reserve", order)
        return StepResponse(output={"reserved": True}, compensation_data={"id": order["order_id"]})

    @app.task(name="aio.refund", shared=False)
    def refund(compensation_data: dict[str, Any]) -> None:
        """Undo `charge`."""

    @app.task(name="aio.charge", shared=False)
    def charge(**order: Any) -> StepResponse:
        work("charge", order)
        return StepResponse(output={"charged": order["amount"]}, compensation_data={"n": 1})

    @app.task(name="aio.confirm", shared=False)
    def confirm(**order: Any) -> dict[str, Any]:
        work("confirm", order)
        return {"confirmed": order["order_id"]}

    saga = (
        Saga(name, app=app)
        .add_step(reserve, compensate=release)
        .add_step(charge, compensate=refund)
        .add_step(confirm, no_compensation=True)
    )
    return app, saga


if "AIO_BROKER" in os.environ:
    app, order_saga = make_app(
        broker=os.environ["AIO_BROKER"],
        store=os.environ["AIO_STORE"],
        queue=os.environ["AIO_QUEUE"],
    )

    @worker_ready.connect
    def _announce(**_: Any) -> None:
        ready = os.environ.get("AIO_READY")
        if ready:
            import redis

            url, key = ready.rsplit("|", 1)
            client = redis.Redis.from_url(url)
            client.set(key, socket.gethostname(), ex=3600)
            client.close()
