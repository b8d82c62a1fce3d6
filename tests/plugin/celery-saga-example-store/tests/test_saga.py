"""A real saga runs on the example store, named only by the app's `saga_backend` URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_saga import Saga, SagaCompensated, SagaStatus, StepResponse, StepStatus, saga_step
from celery_saga.backends import backend_from_url

app = Celery("example_store_saga", broker="memory://", set_as_current=False)
app.conf.task_always_eager = True
LEDGER: dict[str, float] = {}


@app.task(shared=False, name="example.refund")
def refund(compensation_data: dict[str, Any]) -> None:
    LEDGER.pop(compensation_data["txn"], None)


@saga_step(compensate=refund)
@app.task(shared=False, name="example.charge")
def charge(**order: Any) -> StepResponse:
    LEDGER[f"txn-{order['order_id']}"] = order["amount"]
    return StepResponse(output={"txn": f"txn-{order['order_id']}"})


@app.task(shared=False, name="example.ship")
def ship(**order: Any) -> dict[str, Any]:
    if order["item"] != "book":
        raise RuntimeError(f"{order['item']!r} is out of stock")
    return {"shipped": order["txn"]}


order = Saga("example_store_order", app=app).add_step(charge).add_step(ship, no_compensation=True)


def test_a_saga_completes_and_another_compensates(tmp_path: Path) -> None:
    url = f"examplestore:///{tmp_path / 'sagas.db'}"
    app.conf.saga_backend = url

    done = order.run(order_id="A-1", amount=10.0, item="book")
    assert done.get(timeout=10)["shipped"] == "txn-A-1"
    undone = order.run(order_id="A-2", amount=5.0, item="lamp")
    with pytest.raises(SagaCompensated, match="out of stock"):
        undone.get(timeout=10)
    assert LEDGER == {"txn-A-1": 10.0}

    # The records are in the SQLite file: a second store on the same URL reads them.
    store = backend_from_url(url)
    try:
        first, second = store.get(done.saga_id), store.get(undone.saga_id)
        assert first is not None and second is not None
        assert first.status is SagaStatus.COMPLETED
        assert [s.status for s in first.steps] == [StepStatus.SUCCESS, StepStatus.SUCCESS]
        assert second.status is SagaStatus.COMPENSATED
        assert [s.status for s in second.steps] == [StepStatus.COMPENSATED, StepStatus.FAILED]
    finally:
        store.close()
