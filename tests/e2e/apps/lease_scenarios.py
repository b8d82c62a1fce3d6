"""Sagas for the lease tests: long steps and compensations, a frozen worker, redelivery.

Every body counts its runs in the journal (``runs:<saga>:<what>``) and how many of
its kind run at the same moment (``busy:<what>`` with the peak in ``peak:<what>``),
so a test can check that nothing ran twice, and never twice at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery
from scenarios import Journal

from celery_saga import PermanentFailure, Saga, StepResponse, current_step, saga_step


@dataclass
class LeaseScenarios:
    """The sagas of the lease tests."""

    long_step: Saga
    long_compensation: Saga
    frozen: Saga
    unknown_task: Saga
    unserved_queue: Saga
    self_retrying: Saga


def build_leases(app: Celery, journal: Journal) -> LeaseScenarios:
    """Define the lease scenario tasks on `app` and the sagas using them."""
    name = "e2e.leases"

    def here() -> tuple[str, int]:
        header = current_step()
        assert header is not None
        return header.saga_id, header.attempt

    @contextmanager
    def running(what: str) -> Iterator[str]:
        saga_id, _attempt = here()
        journal.incr(f"runs:{saga_id}:{what}")
        busy = journal.incr(f"busy:{saga_id}:{what}")
        if busy > 1:
            journal.effect("overlaps", f"{saga_id}:{what}")
        try:
            yield saga_id
        finally:
            journal.incr(f"busy:{saga_id}:{what}", -1)

    @app.task(shared=False, name=f"{name}.undo_first")
    def undo_first(data: Any) -> None:
        with running("undo_first") as saga_id:
            journal.effect("undone", f"{saga_id}:first")

    @saga_step(compensate=undo_first)
    @app.task(shared=False, name=f"{name}.first")
    def first(**kw: Any) -> dict[str, Any]:
        with running("first") as saga_id:
            journal.effect("effects", f"{saga_id}:first")
            return {"first": True}

    @app.task(shared=False, name=f"{name}.undo_long", acks_late=True)
    def undo_long(data: Any) -> None:
        with running("undo_long") as saga_id:
            time.sleep(float(data["comp_seconds"]))  # a slow compensation
            journal.effect("undone", f"{saga_id}:long:{data['attempt']}")

    @saga_step(compensate=undo_long)
    @app.task(shared=False, name=f"{name}.long", acks_late=True)
    def long(**kw: Any) -> StepResponse:
        saga_id, attempt = here()
        with running("long"):
            journal.record(f"long:pid:{os.getpid()}")
            journal.set_flag(f"long-started:{saga_id}", True)
            if attempt > 1 and kw.get("fail_retaken"):
                raise PermanentFailure(f"attempt {attempt} refuses to run again")
            time.sleep(float(kw["seconds"]))  # the long work of the step
            journal.effect("effects", f"{saga_id}:long:{attempt}")
            data = {"attempt": attempt, "comp_seconds": kw.get("comp_seconds", 0)}
            return StepResponse(output={"long": attempt}, compensation_data=data)

    @app.task(shared=False, name=f"{name}.last")
    def last(**kw: Any) -> dict[str, Any]:
        with running("last"):
            if kw.get("fail_last"):
                raise PermanentFailure("the last step fails, so the saga compensates")
            return {"last": True}

    def around_long(saga_name: str) -> Saga:
        """first, then the long step, then last: the shape of every long-step saga here."""
        return (
            Saga(f"{name}.{saga_name}", app=app)
            .add_step(first)
            .add_step(long)
            .add_step(last, no_compensation=True)
        )

    long_step, long_compensation, frozen = (
        around_long(n) for n in ("long_step", "long_compensation", "frozen")
    )
    unknown_task = (
        Saga(f"{name}.unknown_task", app=app)
        .add_step(first)
        .add_step("warehouse.shipp", compensate="warehouse.unship")
        .add_step(last, no_compensation=True)
    )
    unserved_queue = (
        Saga(f"{name}.unserved_queue", app=app)
        .add_step(first)
        .add_step(
            "warehouse.ship",
            compensate="warehouse.unship",
            options={"queue": f"{name}.nobody-consumes-this"},
        )
        .add_step(last, no_compensation=True)
    )

    @app.task(
        shared=False,
        name=f"{name}.shaky",
        autoretry_for=(ConnectionError,),
        max_retries=5,
        default_retry_delay=0,
    )
    def shaky(**kw: Any) -> dict[str, Any]:
        with running("shaky") as saga_id:
            if journal.incr(f"shaky:{saga_id}") <= kw["fail_times"]:
                raise ConnectionError("the service is not there yet: Celery retries the task")
            return {"shaky": "done"}

    self_retrying = (
        Saga(f"{name}.self_retrying", app=app)
        .add_step(first)
        .add_step(shaky, no_compensation=True)
        .add_step(last, no_compensation=True)
    )
    return LeaseScenarios(
        long_step=long_step,
        long_compensation=long_compensation,
        frozen=frozen,
        unknown_task=unknown_task,
        unserved_queue=unserved_queue,
        self_retrying=self_retrying,
    )
