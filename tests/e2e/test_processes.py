"""Sagas on real `celery worker` processes (prefork), Redis broker and Redis store."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest
from e2e_support import ProcessSetup, WorkerProcess

from celery_saga import SagaCompensated, SagaStatus, StepStatus

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def test_five_step_saga_completes_on_one_worker_process(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    worker_processes("worker_app", [processes.queue], 1, processes.env())
    _app, (scenarios, _) = processes.app()
    result = scenarios.five.run(order_id="c1", amount=3)
    assert result.get(timeout=60)["out5"] == 5
    assert scenarios.journal.events(result.saga_id) == ["do1", "do2", "do3", "do4", "do5"]
    failing = scenarios.five.run(order_id="c1", amount=3, fail=4)
    with pytest.raises(SagaCompensated):
        failing.get(timeout=60)
    assert scenarios.journal.events(failing.saga_id) == [
        "do1",
        "do2",
        "do3",
        "do4",
        "undo3",
        "undo2",
        "undo1",
    ]


def test_steps_on_two_queues_served_by_separate_worker_processes(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    qa, qb = f"{processes.queue}-a", f"{processes.queue}-b"
    routes = {"svc_b.*": {"queue": qb}}
    env = processes.env(
        SAGA_E2E_QUEUE=qa, SAGA_E2E_SAGA_QUEUE=qa, SAGA_E2E_ROUTES=json.dumps(routes)
    )
    worker_processes("worker_app", [qa], 2, env)
    worker_processes("svc_b_app", [qb], 1, processes.env(SAGA_E2E_QUEUE=qb))
    app, (_, routing) = processes.app(saga_queue=qa, routes=routes)
    app.conf.task_default_queue = qa

    result = routing.run(order_id="r1")
    assert result.get(timeout=60) == {"order_id": "r1", "a": "done", "svc_b": "B-r1", "c": "B-r1"}
    journal = processes.app()[1][0].journal
    assert [e.split("@")[0] for e in journal.events(result.saga_id)] == ["svc_b.reserve"]
    assert "svc_b_app" not in sys.modules  # this process never imported the other service

    failed = routing.run(order_id="r2", fail="c")
    with pytest.raises(SagaCompensated) as info:
        failed.get(timeout=60)
    assert journal.events(failed.saga_id)[-1] == "svc_b.release:B-r2"
    steps = info.value.execution.steps
    assert [s.status for s in steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]


def test_100_sagas_with_a_20_way_parallel_group_record_every_output(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    worker_processes("worker_app", [processes.queue], 4, processes.env())
    _app, (scenarios, _) = processes.app()
    results = [scenarios.wide.run(batch=i) for i in range(100)]
    for result in results:
        output = result.get(timeout=180)
        assert all(output[f"w{i}"] == i for i in range(20))
    for result in results:
        execution = result.execution
        assert execution.status is SagaStatus.COMPLETED
        members = execution.steps[1:]
        assert len(members) == 20
        assert all(s.status is StepStatus.SUCCESS for s in members)
        assert [s.output for s in members] == [{f"w{i}": i} for i in range(20)]
        assert sorted(s.seq for s in members) == list(range(1, 21))
