"""Composition with real worker processes on every shared store: many parents with a
child in a parallel group, SIGKILLs while children run, and external steps completed
from another process and from the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from e2e_support import APPS, ProcessSetup, WorkerProcess, wait_for

from celery_saga import SagaStatus, StepStatus, recover

pytestmark = [pytest.mark.processes, pytest.mark.slow]

TERMINAL = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


def store_of(app: Any) -> Any:
    from celery_saga.config import backend_for

    return backend_for(app)


def children(store: Any, saga_id: str) -> list[Any]:
    return store.list(parent_id=saga_id, limit=10).items


def test_fifty_parents_with_a_child_in_a_parallel_group_one_member_failing(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    env = processes.env()
    for _ in range(2):
        worker_processes("worker_app", [processes.queue], 3, env, pool="threads")
    app, (scenarios, _) = processes.app()
    c, store = scenarios.composition, store_of(app)
    roots = [f"g{i}-{os.urandom(3).hex()}" for i in range(50)]
    results = [c.group.run(root=key, fail="PB") for key in roots]
    wait_for(lambda: all(r.status in TERMINAL for r in results), 180, "every parent to finish")
    reverted = 0
    for key, result in zip(roots, results, strict=True):
        execution = result.execution
        assert execution.status is SagaStatus.COMPENSATED, (key, execution.error)
        log = c.journal.log(key)
        assert Counter(log).most_common(1)[0][1] == 1, (key, log)  # nothing twice
        assert log[0] == "do:P0" and log[-1] == "undo:P0" and "do:P3" not in log
        assert "undo:PA" in log and "undo:PB" not in log
        step = execution.step(2)
        kids = children(store, result.saga_id)
        if step.child_id is None:
            assert step.status is StepStatus.SKIPPED and not kids, key
        else:
            assert [k.saga_id for k in kids] == [step.child_id]
            assert kids[0].status is SagaStatus.REVERTED and step.status is StepStatus.COMPENSATED
            leaf = [e for e in log if e.endswith(("L1", "L2", "L3"))]
            assert leaf == ["do:L1", "do:L2", "do:L3", "undo:L3", "undo:L2", "undo:L1"]
            reverted += 1
    print(f"\ncomposition figures: 50 parents, {reverted} children ran and were reverted")


def test_sigkilled_workers_while_children_run_start_no_child_twice_and_strand_none(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    rng = random.Random(int(os.environ.get("CELERY_SAGA_CRASH_SEED", "20261202")))
    conf = {"saga_lease_seconds": 3.0}
    env = processes.env(SAGA_E2E_CONF=json.dumps(conf))
    worker = worker_processes("worker_app", [processes.queue], 2, env)
    app, (scenarios, _) = processes.app(conf=conf)
    c, store = scenarios.composition, store_of(app)
    plans = [("L3" if i % 4 == 0 else None) for i in range(24)]
    roots = [f"k{i}-{os.urandom(3).hex()}" for i in range(len(plans))]
    results = [
        c.top.run(root=key, fail=plan, pause=0.1) for key, plan in zip(roots, plans, strict=True)
    ]
    for _ in range(3):
        time.sleep(rng.uniform(1.0, 3.0))  # a random moment to crash at
        worker.kill()
        worker = worker_processes("worker_app", [processes.queue], 2, env)
    started = time.monotonic()

    def done() -> bool:
        recover(app, stalled_after=5)  # the beat schedule's recovery pass
        return all(r.status in TERMINAL for r in results)

    wait_for(done, 240, "every saga to finish after the last restart")
    took = time.monotonic() - started
    for key, plan, result in zip(roots, plans, results, strict=True):
        top = result.execution
        (middle,) = children(store, top.saga_id)  # one child per child step, never two
        (leaf,) = children(store, middle.saga_id)
        expected = SagaStatus.COMPLETED if plan is None else SagaStatus.COMPENSATED
        assert [top.status, middle.status, leaf.status] == [expected] * 3, key
        assert top.step(1).child_id == middle.saga_id
        log = c.journal.log(key)
        undone = [e for e in log if e.startswith("undo:")]
        assert Counter(undone).most_common(1)[0][1] == 1 if undone else True, (key, log)
        if plan is not None:
            assert undone == ["undo:L2", "undo:L1", "undo:M1", "undo:T1"], (key, log)
    print(f"\ncomposition figures: 24 three-level sagas, 3 SIGKILLs, {took:.1f}s to all terminal")


def _settle_in_another_process(processes: ProcessSetup, saga_id: str, txn: str) -> dict[str, Any]:
    """A webhook handler's process: it imports the app, makes a handle, completes the step."""
    code = (
        "import json, sys\n"
        "from worker_app import app\n"
        "from celery_saga import SagaResult\n"
        "from celery_saga.config import backend_for\n"
        f"done = SagaResult({saga_id!r}, backend_for(app)).complete_step("
        f"'await_payment', {{'txn': {txn!r}}})\n"
        "print(json.dumps({'applied': done.applied, 'reason': done.reason}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **processes.env(), "PYTHONPATH": str(APPS)},
        cwd=str(APPS),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _cli(processes: ProcessSetup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker_app", "saga", *args],
        env={**os.environ, **processes.env(), "PYTHONPATH": str(APPS)},
        cwd=str(APPS),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_external_step_completed_from_another_process_and_from_the_cli(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    worker_processes("worker_app", [processes.queue], 2, processes.env())
    _app, (scenarios, _) = processes.app()
    c = scenarios.composition

    def waiting(result: Any) -> bool:
        return bool(result.execution.step(1).lease_owner)

    first = c.checkout.run(root="x1")
    wait_for(lambda: waiting(first), 60, "the saga to wait for the payment")
    assert _settle_in_another_process(processes, first.saga_id, "t-1")["applied"] is True
    assert first.get(timeout=60)["txn"] == "t-1"
    again = _settle_in_another_process(processes, first.saga_id, "t-2")
    assert again["applied"] is False and "already success" in again["reason"]

    second = c.checkout.run(root="x2")
    wait_for(lambda: waiting(second), 60, "the saga to wait for the payment")
    done = _cli(
        processes,
        "complete",
        second.saga_id,
        "await_payment",
        "--output",
        '{"txn": "t-3", "root": "x2"}',
    )
    assert done.returncode == 0, done.stderr
    assert "step 'await_payment' success" in done.stdout
    assert second.get(timeout=60)["txn"] == "t-3"
    refused = _cli(processes, "complete", second.saga_id, "await_payment")
    assert refused.returncode == 1 and "already success" in refused.stderr
    bad = _cli(processes, "complete", second.saga_id, "await_payment", "--output", "[1]")
    assert bad.returncode == 2 and "must be a JSON object" in bad.stderr
    reverted = _cli(processes, "revert", second.saga_id, "--reason", "returned")
    assert reverted.returncode == 0, reverted.stderr
    wait_for(
        lambda: second.status is SagaStatus.REVERTED,
        60,
        "the revert",
    )
    assert c.journal.log("x2") == ["do:C1", "do:C3", "undo:C3", "undo:payment:t-3", "undo:C1"]
    twice = _cli(processes, "revert", second.saga_id)
    assert twice.returncode == 1 and "is reverted" in twice.stderr

    third = c.checkout.run(root="x3")
    wait_for(lambda: waiting(third), 60, "the saga to wait for the payment")
    failed = _cli(processes, "fail", third.saga_id, "await_payment", "--error", "declined")
    assert failed.returncode == 0, failed.stderr
    wait_for(lambda: third.status is SagaStatus.COMPENSATED, 60, "the compensation")
    assert "declined" in (third.execution.step(1).error or "")
