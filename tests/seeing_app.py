"""Sagas to look at: the app of the graph, timeline and ``show``/``graph``/``stats`` tests.

`make_app` builds an app of its own (tasks not shared) with:

- ``<prefix>.order``: reserve, then charge and pack side by side, then ship. ``charge``
  fails its first attempt when the order says ``flaky`` (its `RetryPolicy` sends a
  second), ``ship`` fails for good when the order says ``fail``: the saga then
  compensates pack, charge and reserve.
- ``<prefix>.approval``: reserve, an external step ``approve``, then ship.

`composed` builds a definition with every kind of node (a transform, a condition over a
parallel group holding a child saga, an external step with a timeout) for the graph tests.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_saga import RetryPolicy, Saga, StepResponse

_attempts: dict[str, int] = {}


def make_app(prefix: str) -> tuple[Celery, dict[str, Saga]]:
    """An app with the order and approval sagas, named ``<prefix>.order`` and so on."""
    app = Celery(prefix, set_as_current=False)
    app.conf.update(worker_hijack_root_logger=False)

    @app.task(name=f"{prefix}.release", shared=False)
    def release(compensation_data: Any = None, **_: Any) -> None:
        """Undo `reserve`."""

    @app.task(name=f"{prefix}.reserve", shared=False)
    def reserve(**order: Any) -> dict[str, Any]:
        return {"reserved": order["order_id"]}

    @app.task(name=f"{prefix}.refund", shared=False)
    def refund(compensation_data: Any = None, **_: Any) -> None:
        """Undo `charge`."""

    @app.task(name=f"{prefix}.charge", shared=False)
    def charge(**order: Any) -> dict[str, Any]:
        key = f"{prefix}:{order['order_id']}"
        _attempts[key] = _attempts.get(key, 0) + 1
        if order.get("flaky") and _attempts[key] == 1:
            raise ConnectionError("payment gateway timed out")
        return {"charged": order["amount"]}

    @app.task(name=f"{prefix}.unpack", shared=False)
    def unpack(compensation_data: Any = None, **_: Any) -> None:
        """Undo `pack`."""

    @app.task(name=f"{prefix}.pack", shared=False)
    def pack(**order: Any) -> dict[str, Any]:
        return {"packed": True}

    @app.task(name=f"{prefix}.ship", shared=False)
    def ship(**order: Any) -> dict[str, Any]:
        if order.get("fail"):
            StepResponse.permanent_failure("no truck today")
        return {"shipped": True}

    quick = RetryPolicy(max_retries=2, backoff=0, jitter=False)
    order = (
        Saga(f"{prefix}.order", app=app)
        .add_step(reserve, compensate=release)
        .add_parallel((charge, refund), (pack, unpack), retry=quick)
        .add_step(ship, no_compensation=True)
    )
    approval = (
        Saga(f"{prefix}.approval", app=app)
        .add_step(reserve, compensate=release)
        .add_external("approve", timeout=600, no_compensation=True)
        .add_step(ship, no_compensation=True)
    )
    return app, {"order": order, "approval": approval}


def big(context: dict[str, Any]) -> bool:
    """The condition of `composed`: only big orders are paid for in two parts."""
    return bool(context.get("amount", 0) > 100)


def tidy(context: dict[str, Any]) -> dict[str, Any]:
    """The transform of `composed`."""
    return context


def composed(app: Celery, prefix: str) -> tuple[Saga, Saga]:
    """(parent, child): every kind of plan node, in a parent saga of five stages.

    Stages: 0 reserve; (transform tidy); 1 when big: charge and the child saga side by
    side; 2 external approve (timeout 300 s); 3 ship (nothing to undo).
    """
    child = Saga(f"{prefix}.payment", app=app).add_step(f"{prefix}.charge2")
    parent = (
        Saga(f"{prefix}.composed", app=app)
        .add_step(f"{prefix}.reserve", compensate=f"{prefix}.release")
        .add_transform(tidy)
        .add_parallel((f"{prefix}.charge", f"{prefix}.refund"), child, when=big)
        .add_external("approve", timeout=300, compensate=f"{prefix}.disapprove")
        .add_step(f"{prefix}.ship", no_compensation=True)
    )
    return parent, child
