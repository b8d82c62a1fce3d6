"""Every example of the celery-saga 0.1.1 README runs unchanged (eager mode, memory store).

The examples are copied as written there; only the surrounding tasks and services
(`payment_service`, `validate_order`...) are defined here so they can run.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from celery_saga import (
    PermanentFailure,
    Saga,
    SagaCompensated,
    SagaFailed,
    SagaResult,
    SagaStatus,
    StepResponse,
    StepStatus,
    parallelize,
    saga,
    saga_step,
    saga_task,
    set_default_backend,
    step,
    transform,
)
from celery_saga.backends import MemorySagaBackend

app = Celery("myapp", broker="memory://", set_as_current=False)
app.conf.task_always_eager = True
calls: list[Any] = []


class PaymentService:
    def charge(self, order_id: str, amount: float) -> Any:
        calls.append(("charge", order_id, amount))
        return SimpleNamespace(id=f"txn-{order_id}")

    def refund(self, txn_id: str, amount: float) -> None:
        calls.append(("refund", txn_id, amount))


payment_service = PaymentService()


# --- "Define Steps", as in the 0.1.1 README -------------------------------------------
@saga_step(compensate="myapp.tasks.refund_payment")
@app.task(shared=False)
def charge_payment(**kwargs):  # type: ignore[no-untyped-def]
    txn = payment_service.charge(kwargs["order_id"], kwargs["amount"])
    return StepResponse(
        output={"transaction_id": txn.id},
        compensation_data={"transaction_id": txn.id, "amount": kwargs["amount"]},
    )


@app.task(shared=False, name="myapp.tasks.refund_payment")
def refund_payment(compensation_data):  # type: ignore[no-untyped-def]
    payment_service.refund(
        compensation_data["transaction_id"],
        compensation_data["amount"],
    )


# --- the other tasks the README's sagas use ----------------------------------------------
@app.task(shared=False)
def validate_order(**kwargs: Any) -> dict[str, Any]:
    calls.append(("validate", kwargs["order_id"]))
    return {"valid": True}


@app.task(shared=False, name="myapp.tasks.release")
def release_inventory(compensation_data: Any) -> None:
    calls.append(("release", compensation_data["reservation"]))


@saga_step(compensate=release_inventory)
@app.task(shared=False)
def reserve_inventory(**kwargs: Any) -> dict[str, Any]:
    calls.append(("reserve", kwargs["order_id"]))
    if kwargs.get("out_of_stock"):
        raise RuntimeError("out of stock")
    return {"reservation": f"res-{kwargs['order_id']}"}


@app.task(shared=False)
def send_confirmation(**kwargs: Any) -> dict[str, Any]:
    calls.append(("confirm", kwargs.get("order_id"), kwargs.get("txn")))
    return {"confirmed": True}


@app.task(shared=False)
def charge_in_cents(**kwargs: Any) -> dict[str, Any]:
    calls.append(("cents", kwargs["amount_cents"]))
    return {"charged_cents": kwargs["amount_cents"]}


@app.task(shared=False, name="cleanup_records")
def cleanup_records(compensation_data: Any) -> None:
    calls.append(("cleanup", compensation_data["processed_ids"]))


def do_work(item: Any) -> int:
    return int(item.id)


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    calls.clear()
    set_default_backend(MemorySagaBackend())
    yield
    set_default_backend(None)


def test_builder_api() -> None:
    order_saga = (
        Saga("order_saga")
        .add_step(validate_order, no_compensation=True)
        .add_step(charge_payment)
        .add_step(reserve_inventory)
        .add_step(send_confirmation, no_compensation=True)
    )

    result = order_saga.run(order_id="abc-123", amount=99.99)
    output = result.get(timeout=30)
    assert output["transaction_id"] == "txn-abc-123" and output["confirmed"] is True
    assert [c[0] for c in calls] == ["validate", "charge", "reserve", "confirm"]


def test_builder_api_compensates_in_reverse() -> None:
    order_saga = (
        Saga("order_saga_2")
        .add_step(validate_order, no_compensation=True)
        .add_step(charge_payment)
        .add_step(reserve_inventory)
        .add_step(send_confirmation, no_compensation=True)
    )
    result = order_saga.run(order_id="abc-124", amount=10.0, out_of_stock=True)
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=30)
    assert calls[-1] == ("refund", "txn-abc-124", 10.0)
    assert info.value.execution.status is SagaStatus.COMPENSATED
    assert result.status == SagaStatus.COMPENSATED and result.is_complete


def test_functional_api() -> None:
    @saga("order_saga_fn")
    def order_saga(input):  # type: ignore[no-untyped-def]
        order = step(validate_order, input)
        payment = step(charge_payment, order)
        step(send_confirmation, payment)
        return payment

    result = order_saga.run(order_id="abc-123", amount=99.99)
    assert result.get(timeout=30) == {"transaction_id": "txn-abc-123"}


def test_parallel_steps() -> None:
    order_saga = (
        Saga("order_saga_par")
        .add_step(validate_order)
        .add_parallel(charge_payment, reserve_inventory)
        .add_step(send_confirmation)
    )
    out = order_saga.run(order_id="p-1", amount=5.0).get(timeout=30)
    assert out["transaction_id"] == "txn-p-1" and out["reservation"] == "res-p-1"

    @saga("order_saga_par_fn")
    def fn(input):  # type: ignore[no-untyped-def]
        order = step(validate_order, input)
        payment, inventory = parallelize(
            step(charge_payment, order),
            step(reserve_inventory, order),
        )
        return transform((payment, inventory), lambda p, i: {**p, **i})

    assert fn.run(order_id="p-2", amount=1.0).get(timeout=30) == {
        "transaction_id": "txn-p-2",
        "reservation": "res-p-2",
    }


def test_data_transforms() -> None:
    order_saga = (
        Saga("order_saga_tx")
        .add_step(validate_order)
        # Global context transform
        .add_transform(lambda ctx: {**ctx, "amount_cents": ctx["amount"] * 100})
        .add_step(charge_in_cents)
        # Per-step input mapper
        .add_step(
            send_confirmation,
            input=lambda ctx: {"order_id": ctx["order_id"], "txn": ctx["charged_cents"]},
        )
    )
    order_saga.run(order_id="t-1", amount=2).get(timeout=30)
    assert ("cents", 200) in calls and ("confirm", "t-1", 200) in calls


def test_permanent_failure_with_partial_compensation_data() -> None:
    """As in the README, except that items arrive as JSON and are wrapped in objects.

    Step inputs travel as JSON messages, so the README's `item.invalid` objects are
    built inside the task from the dicts the saga input carries.
    """

    @saga_step(compensate="cleanup_records")
    @app.task(shared=False)
    def process_batch(**kwargs):  # type: ignore[no-untyped-def]
        kwargs["items"] = [SimpleNamespace(**i) for i in kwargs["items"]]
        processed = []
        for item in kwargs["items"]:
            if item.invalid:
                raise StepResponse.permanent_failure(
                    "Invalid item found",
                    compensation_data={"processed_ids": processed},
                )
            processed.append(do_work(item))
        return StepResponse(output={"processed": processed})

    items = [{"id": 1, "invalid": False}, {"id": 2, "invalid": False}, {"id": 3, "invalid": True}]
    batch_saga = Saga("batch_saga").add_step(process_batch)
    with pytest.raises(SagaCompensated):
        batch_saga.run(items=items).get(timeout=30)
    assert calls == [("cleanup", [1, 2])]
    with pytest.raises(PermanentFailure):
        StepResponse.permanent_failure("x")


def test_idempotency() -> None:
    order_saga = Saga("order_saga_idem").add_step(validate_order).add_step(charge_payment)
    first = order_saga.run(order_id="abc-123", amount=3.0, idempotency_key="order-abc-123")
    again = order_saga.run(order_id="abc-123", amount=3.0, idempotency_key="order-abc-123")
    assert first.saga_id == again.saga_id
    assert [c[0] for c in calls] == ["validate", "charge"]


def test_state_backends_as_written() -> None:
    from celery_saga import set_default_backend
    from celery_saga.backends import MemorySagaBackend

    # Memory (testing)
    set_default_backend(MemorySagaBackend())
    try:
        from celery_saga.backends import RedisSagaBackend
    except ImportError as exc:  # the Redis package is a separate install
        assert "pip install celery-saga-redis" in str(exc)  # noqa: PT017
    else:
        # Redis (production)
        backend = RedisSagaBackend(url="redis://localhost:6379/0")
        assert backend.keys.prefix == "saga:"


def test_saga_task_and_lifecycle_names() -> None:
    @saga_task(app, compensate=refund_payment, shared=False)
    def charge_direct(**kwargs):  # type: ignore[no-untyped-def]
        return {"charged": kwargs["amount"]}

    result = Saga("st_saga").add_step(charge_direct).run(amount=4)
    assert isinstance(result, SagaResult)
    assert result.get(timeout=30) == {"amount": 4, "charged": 4}
    assert result.steps[0]["status"] == StepStatus.SUCCESS.value == "success"
    assert {s.value for s in SagaStatus} >= {
        "pending",
        "running",
        "compensating",
        "completed",
        "compensated",
        "failed",
    }
    assert issubclass(SagaFailed, Exception) and issubclass(SagaCompensated, Exception)
