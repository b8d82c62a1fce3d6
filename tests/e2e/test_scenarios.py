"""The saga scenarios, in every environment of the `env` fixture.

Each test runs real sagas: eagerly, or on a real worker consuming a Redis or
RabbitMQ broker, with the memory or the Redis state store. Side effects are read
from the journal the tasks write, and statuses from the state store.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery
from celery.backends.base import DisabledBackend
from e2e_support import Env

from celery_saga import SagaCompensated, SagaStatus, StepOutputError, StepStatus

TIMEOUT = 60


def compensated(env: Env, result: object) -> SagaCompensated:
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=TIMEOUT)  # type: ignore[attr-defined]
    return info.value


def test_happy_path_runs_every_step_once_in_order(env: Env) -> None:
    result = env.scenarios.five.run(order_id="o-1", amount=10)
    output = result.get(timeout=TIMEOUT)
    assert output == {
        "order_id": "o-1",
        "amount": 10,
        "out1": 1,
        "out2": 2,
        "out3": 3,
        "out4": 4,
        "out5": 5,
    }
    assert env.scenarios.journal.events(result.saga_id) == ["do1", "do2", "do3", "do4", "do5"]
    execution = result.execution
    assert execution.status is SagaStatus.COMPLETED
    assert [s.status for s in execution.steps] == [StepStatus.SUCCESS] * 5
    assert all(s.attempt == 1 and s.task_id.endswith(f"-s{s.index}-1") for s in execution.steps)


@pytest.mark.parametrize("position", [1, 2, 3, 4, 5])
def test_failure_at_each_position_compensates_earlier_steps_in_reverse(
    env: Env, position: int
) -> None:
    result = env.scenarios.five.run(order_id="o-2", amount=10, fail=position)
    error = compensated(env, result)
    done = [f"do{n}" for n in range(1, position + 1)]
    undone = [f"undo{n}" for n in range(position - 1, 0, -1)]
    assert env.scenarios.journal.events(result.saga_id) == done + undone
    execution = error.execution
    assert execution.status is SagaStatus.COMPENSATED
    statuses = [s.status for s in execution.steps]
    assert statuses[: position - 1] == [StepStatus.COMPENSATED] * (position - 1)
    assert statuses[position - 1] is StepStatus.FAILED
    assert statuses[position:] == [StepStatus.PENDING] * (5 - position)
    assert "told to fail" in execution.step(position - 1).error
    assert execution.failed_step == position - 1
    assert f"step {position - 1}" in str(error)


def test_permanent_failure_is_not_retried_and_compensates_partial_work(env: Env) -> None:
    result = env.scenarios.permanent.run(items=[1, 2, -1, 3])
    error = compensated(env, result)
    assert env.scenarios.journal.events(result.saga_id) == [
        "do1",
        "batch",
        "cleanup:[1, 2]",
        "undo1",
    ]
    step = error.execution.step(1)
    assert step.status is StepStatus.COMPENSATED
    assert step.compensation_data == {"processed": [1, 2]}
    assert "invalid item found" in step.error


def test_parallel_group_records_every_member_output(env: Env) -> None:
    result = env.scenarios.parallel.run(order_id="o-3")
    output = result.get(timeout=TIMEOUT)
    assert {k: output[k] for k in ("m0", "m1", "m2", "m3", "out1", "out5")} == {
        "m0": True,
        "m1": True,
        "m2": True,
        "m3": True,
        "out1": 1,
        "out5": 5,
    }
    events = env.scenarios.journal.events(result.saga_id)
    assert events[0] == "do1" and events[-1] == "do5"
    assert sorted(events[1:5]) == ["member0", "member1", "member2", "member3"]
    seqs = sorted(s.seq for s in result.execution.steps[1:5])
    assert seqs == [1, 2, 3, 4]


def test_parallel_member_failure_compensates_siblings_then_earlier_steps(env: Env) -> None:
    result = env.scenarios.parallel.run(order_id="o-4", fail_member=2)
    error = compensated(env, result)
    events = env.scenarios.journal.events(result.saga_id)
    steps = error.execution.steps
    members = steps[1:5]
    ran = [e for e in events if e.startswith("member")]
    # Members that had started when member 2 failed finished; those that had not
    # yet started never ran (no forward step starts once the saga compensates).
    assert "member2" in ran
    for record in members:
        did_run = f"member{record.index - 1}" in ran
        if record.index == 3:
            assert record.status is StepStatus.FAILED
        elif did_run:
            assert record.status is StepStatus.COMPENSATED
        else:
            assert record.status is StepStatus.SKIPPED
    assert "do5" not in events and steps[5].status is StepStatus.PENDING
    # Compensation: succeeded members in reverse completion order, then step 1.
    undo = [e for e in events if "undo" in e]
    done = sorted(
        (s for s in members if s.status is StepStatus.COMPENSATED),
        key=lambda s: s.seq,
        reverse=True,
    )
    assert undo == [f"p_undo{s.index - 1}" for s in done] + ["undo1"]
    assert events.index(undo[0]) > max(events.index(m) for m in ran)


def test_transforms_and_input_mappers_shape_step_input(env: Env) -> None:
    result = env.scenarios.transforms.run(order_id="o-5", amount=12.5)
    output = result.get(timeout=TIMEOUT)
    execution = result.execution
    assert execution.step(1).output == {
        "echoed": {"amount": 12.5, "amount_cents": 1250, "order_id": "o-5", "out1": 1}
    }
    assert output["amount_cents"] == 1250 and output["out2"] == 2
    assert env.scenarios.journal.events(result.saga_id) == ["do1", "echo", "do2"]


def test_functional_api_returns_what_the_function_returned(env: Env) -> None:
    result = env.scenarios.functional.run(order_id="o-6", amount=20)
    assert result.get(timeout=TIMEOUT) == {"txn": "T-o-6", "res": "R-o-6"}
    events = env.scenarios.journal.events(result.saga_id)
    assert events[0] == "validate" and sorted(events[1:3]) == ["charge", "reserve"]
    assert events[3] == "confirm"


def test_functional_api_failure_compensates_with_pydantic_data(env: Env) -> None:
    result = env.scenarios.functional.run(order_id="o-7", amount=20, out_of_stock=True)
    error = compensated(env, result)
    events = env.scenarios.journal.events(result.saga_id)
    charge = error.execution.step(1)
    if "charge" in events:  # the sibling had started: it finished, then was refunded
        assert charge.status is StepStatus.COMPENSATED
        assert events[-1] == "refund:T-o-7:20.0"
    else:  # it had not started when reserve failed: it never ran
        assert charge.status is StepStatus.SKIPPED
    assert "confirm" not in events and not any(e.startswith("release") for e in events)
    assert error.execution.step(2).status is StepStatus.FAILED


def test_builder_order_saga_declined_card_releases_reservation(env: Env) -> None:
    result = env.scenarios.order.run(order_id="o-8", amount=5, decline=True)
    error = compensated(env, result)
    events = env.scenarios.journal.events(result.saga_id)
    reserve = error.execution.step(2)
    if "reserve" in events:
        assert reserve.status is StepStatus.COMPENSATED and events[-1] == "release:R-o-8"
    else:
        assert reserve.status is StepStatus.SKIPPED
    assert not any(e.startswith("refund") for e in events)
    assert "card declined" in str(error)


def test_idempotency_key_runs_the_saga_once(env: Env) -> None:
    first = env.scenarios.five.run(order_id="o-9", amount=1, idempotency_key=f"k-{env.name}")
    first.get(timeout=TIMEOUT)
    second = env.scenarios.five.run(order_id="o-9", amount=1, idempotency_key=f"k-{env.name}")
    assert second.saga_id == first.saga_id
    assert second.get(timeout=TIMEOUT)["out5"] == 5
    assert env.scenarios.journal.events(first.saga_id).count("do1") == 1


def test_16_threads_with_one_idempotency_key_make_one_execution(env: Env) -> None:
    key = f"k16-{env.name}-{threading.get_ident()}"
    barrier = threading.Barrier(16)

    def run(_: int) -> str:
        barrier.wait()
        return env.scenarios.five.run(order_id="o-10", amount=1, idempotency_key=key).saga_id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(run, range(16)))
    assert len(set(ids)) == 1
    result = env.scenarios.five.result(ids[0])
    assert result.get(timeout=TIMEOUT)["out5"] == 5
    assert env.scenarios.journal.events(ids[0]) == ["do1", "do2", "do3", "do4", "do5"]
    assert env.store.find_by_idempotency_key(key).saga_id == ids[0]


def test_step_named_by_task_name_reports_by_reply(env: Env) -> None:
    result = env.scenarios.by_name.run(order_id="o-11")
    output = result.get(timeout=TIMEOUT)
    assert output["svc_b"] == "B-o-11" and output["out3"] == 3
    assert env.scenarios.journal.events(result.saga_id) == ["do1", "svc_b.reserve", "do3"]


def test_step_named_by_task_name_failure_compensates(env: Env) -> None:
    result = env.scenarios.by_name.run(order_id="o-12", fail="svc_b")
    error = compensated(env, result)
    assert env.scenarios.journal.events(result.saga_id) == ["do1", "svc_b.reserve", "undo1"]
    assert "svc_b refused" in error.execution.step(1).error


def test_non_json_output_fails_that_step_and_compensates(env: Env) -> None:
    result = env.scenarios.bad_output.run(order_id="o-13")
    error = compensated(env, result)
    step = error.execution.step(1)
    assert step.status is StepStatus.FAILED
    assert "step 1" in step.error and "bad_output" in step.error and "module" in step.error
    assert env.scenarios.journal.events(result.saga_id) == ["do1", "bad_output", "undo1"]


def test_non_json_input_is_refused_before_anything_is_stored(env: Env) -> None:
    before = len(env.store.list(limit=1000).items)
    with pytest.raises(StepOutputError, match=r"input of saga .* object"):
        env.scenarios.five.run(order_id=object())
    assert len(env.store.list(limit=1000).items) == before


def test_no_result_backend_is_configured(env: Env) -> None:
    assert env.app.conf.result_backend is None
    assert isinstance(env.app.backend, DisabledBackend)
    result = env.scenarios.five.run(order_id="o-14", amount=1)
    assert result.get(timeout=TIMEOUT)["out5"] == 5


def test_run_from_threads_whose_current_app_is_elsewhere(env: Env) -> None:
    """run() dispatches on the saga's app, not on the calling thread's current app.

    Each calling thread (as in a web server's pool) sees an app with an unreachable
    broker as its current app; the sagas must still be dispatched and complete.
    """
    from celery import current_app

    decoy = Celery("decoy", broker="amqp://nobody:nothing@127.0.0.1:1//", set_as_current=False)

    def call(i: int) -> object:
        decoy.set_current()
        assert current_app.main == "decoy"
        return env.scenarios.five.run(order_id=f"t-{i}", amount=i)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(8)))
    assert [r.get(timeout=TIMEOUT)["order_id"] for r in results] == [f"t-{i}" for i in range(8)]
