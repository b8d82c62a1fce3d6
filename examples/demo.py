"""The demo: a real Celery worker (in this process, no server needed) runs two orders.

The first order completes; the second asks for an item that is out of stock, so
the payment already taken is refunded. Each step's status and timing is printed.
Run it with ``nox -s demo`` (or ``python examples/demo.py`` with celery-saga-core
installed).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from celery.contrib.testing.worker import start_worker

sys.path.insert(0, str(Path(__file__).parent))

from order_saga import LEDGER, STOCK, app, order_saga

from celery_saga import SagaCompensated, SagaResult


def show(title: str, result: SagaResult) -> None:
    execution = result.execution
    assert execution is not None
    print(f"\n{title}\n  saga {execution.saga_id}: {execution.status.value.upper()}")
    for step in execution.steps:
        took = ""
        if step.started_at and step.finished_at:
            took = f"{(step.finished_at - step.started_at) * 1000:7.2f} ms"
        comp = ""
        if step.comp_finished_at and step.comp_started_at:
            comp = (
                f"  (compensated in {(step.comp_finished_at - step.comp_started_at) * 1000:.2f} ms)"
            )
        print(f"  step {step.index}  {step.task_name:<16} {step.status.value:<12} {took}{comp}")
        if step.error:
            print(f"           error: {step.error}")
    total = (execution.finished_at or execution.updated_at) - execution.created_at
    print(f"  total {total * 1000:.1f} ms")


def main() -> int:
    # The failure in the second order is expected: keep the worker's traceback quiet.
    logging.getLogger("celery").setLevel(logging.CRITICAL)
    logging.getLogger("celery_saga").setLevel(logging.CRITICAL)
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="CRITICAL"
    ):
        ok = order_saga.run(order_id="A-1001", amount=42.0, item="book")
        output = ok.get(timeout=30)
        show("Order A-1001 (a book, in stock): completes", ok)
        print(f"  output: {output['confirmation']}")

        bad = order_saga.run(order_id="A-1002", amount=19.5, item="lamp")
        try:
            bad.get(timeout=30)
        except SagaCompensated as exc:
            show("Order A-1002 (a lamp, out of stock): compensates", bad)
            print(f"  why: {exc.execution.error}")
        else:
            print("expected the second order to compensate", file=sys.stderr)
            return 1
    print(f"\nLedger after both orders: {LEDGER}  (the refund removed txn-A-1002)")
    print(f"Stock after both orders: {STOCK}")
    return 0 if "txn-A-1002" not in LEDGER and STOCK["book"] == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
