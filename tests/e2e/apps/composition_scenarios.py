"""Sagas that compose: nested children, conditions, external steps, reverts.

Every task records into the journal under the saga input's ``root`` (a key the test
makes), so the order of steps and compensations across all levels of one nested
saga is one list: ``do:T1``, ``undo:L2``... Compensation data carries the root.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celery_saga import Saga, StepResponse, saga, saga_step, step, when


@dataclass
class CompositionScenarios:
    """The composing sagas, and the journal they write to."""

    journal: Any
    leaf: Saga
    middle: Saga
    top: Saga
    group: Saga
    gift: Saga
    gift_functional: Saga
    bad_condition: Saga
    checkout: Saga
    checkout_short: Saga
    revertible: Saga
    approval: Saga


def build_composition(app: Celery, journal: Any, name: str = "e2e.compose") -> CompositionScenarios:
    """Define the composition tasks on `app` and the sagas using them."""

    @app.task(shared=False, name=f"{name}.undo")
    def undo(data: Any) -> None:
        journal.append(data["root"], f"undo:{data['step']}")

    @app.task(shared=False, name=f"{name}.undo_flaky", max_retries=5)
    def undo_flaky(data: Any) -> None:
        tries = journal.incr(f"flaky:{data['root']}")
        if tries <= 2:
            raise RuntimeError(f"the refund service is down (try {tries})")
        journal.append(data["root"], f"undo:{data['step']}")

    def task(label: str, compensate: Any = undo) -> Any:
        @saga_step(compensate=compensate)
        @app.task(shared=False, name=f"{name}.{label}")
        def run(**kw: Any) -> Any:
            root = kw["root"]
            time.sleep(float(kw.get("pause", 0)))  # the step's work (crash tests kill into it)
            journal.append(root, f"do:{label}")
            fail = kw.get("fail")
            if fail == label or (isinstance(fail, list) and label in fail):
                raise RuntimeError(f"{label} was told to fail")
            return StepResponse(
                output={label: True}, compensation_data={"root": root, "step": label}
            )

        return run

    t = {label: task(label) for label in ("T1", "T2", "M1", "M2", "L1", "L2", "L3")}
    t.update({label: task(label) for label in ("P0", "PA", "PB", "P3", "G1", "WRAP", "G3")})
    t.update({label: task(label) for label in ("C1", "C3", "R1", "A0", "A1", "A2")})
    t["R2"] = task("R2", compensate=undo_flaky)

    leaf = Saga(f"{name}.leaf", app=app).add_step(t["L1"]).add_step(t["L2"]).add_step(t["L3"])
    middle = Saga(f"{name}.middle", app=app).add_step(t["M1"]).add_saga(leaf).add_step(t["M2"])
    top = Saga(f"{name}.top", app=app).add_step(t["T1"]).add_saga(middle).add_step(t["T2"])
    group = (
        Saga(f"{name}.group", app=app)
        .add_step(t["P0"])
        .add_parallel(t["PA"], leaf, t["PB"])
        .add_step(t["P3"])
    )
    gift = (
        Saga(f"{name}.gift", app=app)
        .add_step(t["G1"])
        .add_step(t["WRAP"], when=lambda ctx: ctx.get("gift_wrap", False))
        .add_step(t["G3"])
    )

    @saga(f"{name}.gift_functional", app=app)
    def gift_functional(input: Any) -> Any:
        first = step(t["G1"], input)
        when(step(t["WRAP"], first), lambda ctx: ctx.get("gift_wrap", False))
        return step(t["G3"], first)

    def broken_predicate(ctx: dict[str, Any]) -> bool:
        return bool(ctx["no_such_key"])

    bad_condition = (
        Saga(f"{name}.bad_condition", app=app)
        .add_step(t["G1"])
        .add_step(t["WRAP"], when=broken_predicate)
        .add_step(t["G3"])
    )

    @app.task(shared=False, name=f"{name}.refund")
    def refund(data: Any) -> None:
        journal.append(data["root"], f"undo:payment:{data.get('txn')}")

    checkout = (
        Saga(f"{name}.checkout", app=app)
        .add_step(t["C1"])
        .add_external("await_payment", timeout=3600, compensate=refund)
        .add_step(t["C3"])
    )
    checkout_short = (
        Saga(f"{name}.checkout_short", app=app)
        .add_step(t["C1"])
        .add_external("await_payment", timeout=1.0, compensate=refund)
        .add_step(t["C3"])
    )
    revertible = Saga(f"{name}.revertible", app=app).add_step(t["R1"]).add_step(t["R2"])
    approval_child = (
        Saga(f"{name}.approval_child", app=app).add_step(t["A1"]).add_external("approve")
    )
    approval = (
        Saga(f"{name}.approval", app=app)
        .add_step(t["A0"])
        .add_saga(approval_child)
        .add_step(t["A2"])
    )
    return CompositionScenarios(
        journal=journal,
        leaf=leaf,
        middle=middle,
        top=top,
        group=group,
        gift=gift,
        gift_functional=gift_functional,
        bad_condition=bad_condition,
        checkout=checkout,
        checkout_short=checkout_short,
        revertible=revertible,
        approval=approval,
    )
