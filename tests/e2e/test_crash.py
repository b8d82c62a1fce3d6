"""Durability with real worker processes: SIGKILL, store restarts, time limits, misdeployment.

The crash test prints its figures (and writes them to $CELERY_SAGA_CRASH_REPORT when
set): sagas by final status, compensations run per saga, and the seconds from the
last worker restart until every saga was terminal.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ProcessSetup, WorkerProcess, wait_for
from support import IN_CI, POSTGRES_URL

from celery_saga import SagaCompensated, SagaStatus, StepStatus, recover

pytestmark = [pytest.mark.processes, pytest.mark.slow]


def all_terminal(results: list[Any]) -> bool:
    return all(r.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED) for r in results)


def recover_until_done(app: Any, results: list[Any], timeout: float, stalled: float) -> float:
    """Run the recovery pass until every saga is terminal; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not all_terminal(results):
        if time.monotonic() > deadline:
            left = Counter(str(r.status) for r in results)
            pytest.fail(f"sagas not terminal {timeout}s after the last restart: {left}")
        recover(app, stalled_after=stalled)
        time.sleep(0.5)  # the recovery pass runs periodically, like a beat schedule
    return time.monotonic() - started


def test_sigkilled_worker_three_times_then_recovery_finishes_every_saga(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    rng = random.Random(int(os.environ.get("CELERY_SAGA_CRASH_SEED", "20261127")))
    env = processes.env()
    worker = worker_processes("worker_app", [processes.queue], 2, env)
    app, (scenarios, _) = processes.app()
    journal = scenarios.journal
    plans = [3 if i % 5 == 0 else None for i in range(100)]  # every 5th saga fails at step 3
    results = [scenarios.crash.run(n=i, fail_at=plan) for i, plan in enumerate(plans)]
    kills = []
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 3.0))  # a random moment to crash at
        worker.kill()
        kills.append(time.time())
        worker = worker_processes("worker_app", [processes.queue], 2, env)
    last_restart = time.monotonic()
    took = recover_until_done(app, results, timeout=240, stalled=5)
    since_restart = time.monotonic() - last_restart

    finals = Counter(r.status.value for r in results)
    effects = journal.effects("effects")
    undone = journal.effects("undone")
    comp_runs: dict[str, int] = {}
    for result, plan in zip(results, plans, strict=True):
        execution = result.execution
        statuses = [s.status for s in execution.steps]
        if plan is None:
            assert execution.status is SagaStatus.COMPLETED, (result.saga_id, statuses)
            assert statuses == [StepStatus.SUCCESS] * 5
        else:
            assert execution.status is SagaStatus.COMPENSATED, (result.saga_id, statuses)
            assert statuses == [StepStatus.COMPENSATED] * 3 + [
                StepStatus.FAILED,
                StepStatus.PENDING,
            ]
            # Each compensation is recorded once and its effect happened once.
            assert {f"{result.saga_id}:{n}" for n in range(3)} <= undone
            assert all(s.comp_finished_at for s in execution.steps[:3])
            comp_runs[result.saga_id] = journal.count(f"undo-runs:{result.saga_id}")
        # No side effect without its saga knowing of it.
        for n in range(5):
            if f"{result.saga_id}:{n}" in effects:
                assert execution.step(n).status in (StepStatus.SUCCESS, StepStatus.COMPENSATED)
    assert {m.split(":")[0] for m in undone} == {
        r.saga_id for r, p in zip(results, plans, strict=True) if p
    }
    report = {
        "sagas": len(results),
        "final_status": dict(finals),
        "compensations_run_per_compensated_saga": dict(Counter(comp_runs.values())),
        "compensations_recorded_per_compensated_saga": 3,
        "worker_sigkills": len(kills),
        "seconds_from_last_restart_to_all_terminal": round(since_restart, 2),
        "seconds_of_recovery_passes": round(took, 2),
    }
    print("\nCRASH TEST REPORT", json.dumps(report))
    if os.environ.get("CELERY_SAGA_CRASH_REPORT"):
        Path(os.environ["CELERY_SAGA_CRASH_REPORT"]).write_text(json.dumps(report, indent=2))
    assert finals == {"completed": 80, "compensated": 20}


def test_step_over_its_hard_time_limit_fails_and_the_saga_compensates(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    worker_processes("worker_app", [processes.queue], 2, processes.env())
    _, (scenarios, _) = processes.app()
    hard, soft = scenarios.timeout_hard, scenarios.timeout_soft
    for saga, fragment in ((hard, "TimeLimitExceeded"), (soft, "SoftTimeLimitExceeded")):
        result = saga.run(order_id="t", sleep=5)
        with pytest.raises(SagaCompensated) as info:
            result.get(timeout=60)
        step = info.value.execution.step(1)
        assert step.status is StepStatus.FAILED and fragment in step.error
        assert scenarios.journal.events(result.saga_id)[-1] == "undo1"


# -- the state store goes away and comes back ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of this test's own, with append-only persistence."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        import redis

        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 30, "the store's redis-server")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves nothing extra: the AOF has it all
            self.proc.wait(30)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI=true)")
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _outage_run(
    processes: ProcessSetup,
    worker_processes: Callable[..., WorkerProcess],
    store: str,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> None:
    env = processes.env(SAGA_E2E_STORE=store)
    worker_processes("worker_app", [processes.queue], 2, env)
    from worker_app import make_app

    app, (scenarios, _) = make_app(
        broker=processes.broker,
        store=store,
        journal=processes.journal,
        queue=processes.queue,
        prefix=processes.journal_prefix,
    )
    results = [scenarios.crash.run(n=i) for i in range(50)]
    wait_for(lambda: scenarios.journal.effects("effects"), 30, "the first steps to run")
    stop()
    time.sleep(2.0)  # the store stays away for a while: that is the scenario
    start()
    recover_until_done(app, results, timeout=180, stalled=5)
    effects = scenarios.journal.effects("effects")
    for result in results:
        execution = result.execution
        assert execution.status is SagaStatus.COMPLETED
        assert [s.status for s in execution.steps] == [StepStatus.SUCCESS] * 5
        assert execution.output["c4"] == 4
        assert {f"{result.saga_id}:{n}" for n in range(5)} <= effects


@pytest.mark.only_store("redis")
def test_redis_store_restarted_during_a_run_loses_nothing(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess], own_redis: OwnRedis
) -> None:
    store = f"redis://127.0.0.1:{own_redis.port}/0?prefix=restart:"
    _outage_run(processes, worker_processes, store, own_redis.stop, own_redis.start)


@pytest.mark.only_store("postgresql")
def test_postgresql_restarted_during_a_run_loses_nothing(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess], unique: str
) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1] if os.path.isdir("/etc/postgresql") else ""
    if not version or shutil.which("pg_ctlcluster") is None:
        if IN_CI:
            pytest.fail("pg_ctlcluster is not available to restart PostgreSQL (CI=true)")
        pytest.skip("pg_ctlcluster is not available to restart PostgreSQL")
    store = f"{POSTGRES_URL}?table_prefix=rs{unique}_"

    def stop() -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "fast"],
            check=True,
        )

    def start() -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True
        )

    try:
        _outage_run(processes, worker_processes, store, stop, start)
    finally:
        start_ok = subprocess.run(["pg_isready", "-h", "127.0.0.1"], check=False)
        if start_ok.returncode != 0:
            start()
        from support import sql_drop_tables

        sql_drop_tables(store, f"rs{unique}_")


def test_worker_without_the_saga_definition_records_outcomes_and_recovery_finishes(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    worker_processes("worker_app", [processes.queue], 1, processes.env(SAGA_E2E_HIDE_SAGAS="1"))
    app, (scenarios, _) = processes.app()
    result = scenarios.five.run(order_id="h-1", amount=1)

    def recorded() -> bool:
        execution = result.execution
        return execution.step(0).status is StepStatus.SUCCESS and bool(execution.error)

    wait_for(recorded, 60, "the outcome to be recorded without the definition")
    execution = result.execution
    assert "not registered" in execution.error and "celery saga recover" in execution.error
    assert execution.step(0).output == {"out1": 1}  # nothing lost
    assert execution.status is SagaStatus.RUNNING
    # This process defines the saga: its recovery pass moves the saga on, and the
    # steps keep going (each outcome is recorded, then recovered again).
    deadline = time.monotonic() + 120
    while result.status is not SagaStatus.COMPLETED:
        assert time.monotonic() < deadline, result.execution
        recover(app, stalled_after=0)
        time.sleep(0.2)  # periodic, like beat
    assert result.get(timeout=5)["out5"] == 5
