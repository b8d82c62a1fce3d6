"""The sagas the web view tests look at, defined on any Celery app.

Each ends in a state the pages must show: an order that completes, one that is
compensated (a declined charge), a booking whose compensation fails while a switch
is on (FAILED, until an operator retries with the switch off), one waiting for an
external approval (RUNNING), a parent with a child saga. Outputs and errors carry
``<script>`` so the tests can check that every page escapes them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celery_saga import PermanentFailure, Saga, saga_step

#: What a step's output and a step's error carry, to be shown escaped.
SCRIPT_OUTPUT = "<script>alert('output')</script>"
SCRIPT_ERROR = "<script>alert('error')</script>"


class Switches:
    """On/off switches the tasks read (the worker runs in this process, as threads)."""

    def __init__(self) -> None:
        self._on: set[str] = set()
        self._lock = threading.Lock()

    def set(self, key: str, on: bool) -> None:
        with self._lock:
            (self._on.add if on else self._on.discard)(key)

    def on(self, key: str) -> bool:
        with self._lock:
            return key in self._on


@dataclass
class WebSagas:
    """The sagas and their tasks on one app (each test module has an app and a store of
    its own; a saga name is looked up per app, so the names can be plain)."""

    app: Celery
    tag: str
    order: Saga
    booking: Saga
    approval: Saga
    parent: Saga
    child: Saga
    switches: Switches

    def names(self) -> list[str]:
        """Every saga name defined here."""
        return [s.name for s in (self.order, self.booking, self.approval, self.parent, self.child)]


def build(app: Celery, tag: str = "shop") -> WebSagas:
    """Define the tasks (named ``<tag>.<name>``, local to `app`) and sagas on `app`."""
    switches = Switches()

    @app.task(shared=False, name=f"{tag}.release")
    def release(data: Any) -> None:
        return None

    @saga_step(compensate=release)
    @app.task(shared=False, name=f"{tag}.reserve")
    def reserve(**ctx: Any) -> dict[str, Any]:
        return {"reservation": f"R-{ctx.get('order_id', '?')}", "note": SCRIPT_OUTPUT}

    @app.task(shared=False, name=f"{tag}.refund")
    def refund(data: Any) -> None:
        return None

    @saga_step(compensate=refund)
    @app.task(shared=False, name=f"{tag}.charge")
    def charge(**ctx: Any) -> dict[str, Any]:
        if ctx.get("decline"):
            raise PermanentFailure(f"card declined {SCRIPT_ERROR}")
        return {"charge": "C-1", "amount": ctx.get("amount", 0)}

    @app.task(shared=False, name=f"{tag}.notify")
    def notify(**ctx: Any) -> dict[str, Any]:
        return {"notified": True}

    order = (
        Saga("order", app=app)
        .add_step(reserve)
        .add_step(charge)
        .add_step(notify, no_compensation=True)
    )

    @app.task(shared=False, name=f"{tag}.unbook")
    def unbook(data: Any) -> None:
        if switches.on(data["booking"]):
            raise RuntimeError(f"the bank is down for {data['booking']}")

    @saga_step(compensate=unbook)
    @app.task(shared=False, name=f"{tag}.book")
    def book(**ctx: Any) -> dict[str, Any]:
        return {"booking": ctx["booking"]}

    @app.task(shared=False, name=f"{tag}.confirm")
    def confirm(**ctx: Any) -> dict[str, Any]:
        raise PermanentFailure("the hotel refused the booking")

    booking = Saga("booking", app=app).add_step(book).add_step(confirm, no_compensation=True)

    approval = (
        Saga("approval", app=app)
        .add_step(reserve)
        .add_external("manager_approval", compensate=release)
        .add_step(notify, no_compensation=True)
    )

    child = Saga("payment", app=app).add_step(notify, no_compensation=True)
    parent = Saga("checkout", app=app).add_step(reserve).add_saga(child)
    return WebSagas(app, tag, order, booking, approval, parent, child, switches)
