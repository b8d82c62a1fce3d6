"""Leases with real worker processes: long steps, a frozen worker, redelivery, lost tasks.

Recovery runs throughout, far more often and with a far shorter queue-wait limit
than anyone would configure, to show that it never touches an attempt whose worker
is alive. The long-step and frozen-worker tests print their figures (and append them
to $CELERY_SAGA_LEASE_REPORT when set): step bodies run per step, sends per step, and
the seconds from a SIGSTOP to the takeover against the lease.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from e2e_support import ProcessSetup, WorkerProcess, delete_queues, wait_for
from support import LONG_PROCESS_TESTS

from celery_saga import SagaCompensated, SagaStatus, StepStatus, recover

pytestmark = [pytest.mark.processes, pytest.mark.slow, LONG_PROCESS_TESTS]

LEASE = 3.0
#: Aggressive on purpose: 0.2.0's clock-based recovery re-sent every step longer than
#: `saga_recovery_stalled_after`; here that is half the long steps' 20 s (and still
#: above the queue waits of a loaded CI machine, which would be re-sent by design).
CONF: dict[str, Any] = {"saga_lease_seconds": LEASE, "saga_recovery_stalled_after": 10.0}
#: The long-step test's lease: 40 leases at once, see there.
LONG_LEASE = 6.0
TERMINAL = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


def report(figures: dict[str, Any]) -> None:
    """Print the test's figures and keep them where the closing note can find them."""
    line = json.dumps(figures, sort_keys=True)
    print(f"\nlease figures: {line}")
    path = os.environ.get("CELERY_SAGA_LEASE_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


@contextmanager
def recovery_every(app: Any, seconds: float) -> Iterator[list[Any]]:
    """Run the recovery pass every `seconds` in a thread while the block runs."""
    stop = threading.Event()
    reports: list[Any] = []

    def loop() -> None:
        while not stop.wait(seconds):  # a beat schedule: one pass per period
            reports.append(recover(app))

    thread = threading.Thread(target=loop, name="recovery-beat", daemon=True)
    thread.start()
    try:
        yield reports
    finally:
        stop.set()
        thread.join(timeout=60)


def taken(passes: list[Any]) -> list[Any]:
    """What the recovery passes did, for an assertion's message (takeovers name why)."""
    return [r for p in passes for r in p.resumed if r.acted] + [e for p in passes for e in p.errors]


def statuses(results: list[Any]) -> list[Any]:
    return [r.status for r in results]


def test_long_steps_and_compensations_run_once_while_recovery_runs_every_second(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    """20 s steps and 20 s compensations under 6 s leases: every body runs exactly once."""
    seconds = float(os.environ.get("CELERY_SAGA_LONG_STEP_SECONDS", "20"))
    # 40 leases renewed by two processes against a store server that may share the two
    # cores with them (SecantusDB, a Python server, for Mongo): a lease of 6 s (renewed
    # every 2 s) still tolerates a 4 s stall of a beat, and is under a third of a step.
    lease = LONG_LEASE
    # A message a worker prefetched but has not started is waiting in a queue: with a
    # queue-wait limit this short, workers prefetch no more than they can run.
    conf = {**CONF, "saga_lease_seconds": lease, "worker_prefetch_multiplier": 1}
    env = processes.env(SAGA_E2E_CONF=json.dumps(conf))
    for _ in range(2):  # two worker processes, each renewing its 20 leases in one call a beat
        worker_processes("worker_app", [processes.queue], 22, env, pool="threads")
    app, (scenarios, _) = processes.app(conf=conf)
    leases, journal = scenarios.leases, scenarios.journal
    forward = [leases.long_step.run(n=i, seconds=seconds) for i in range(20)]
    backward = [
        leases.long_compensation.run(n=i, seconds=0.05, comp_seconds=seconds, fail_last=True)
        for i in range(20)
    ]
    everything = forward + backward
    with recovery_every(app, 1.0) as passes:
        wait_for(
            lambda: all(s in TERMINAL for s in statuses(everything)),
            timeout=3 * seconds + 90,
            what="every saga to finish",
        )
    errors = [(r.saga_id, r.execution.error) for r in everything if r.execution.error]
    assert statuses(forward) == [SagaStatus.COMPLETED] * 20, errors
    assert statuses(backward) == [SagaStatus.COMPENSATED] * 20, errors
    bodies: list[int] = []
    sends: list[int] = []
    for result in forward:
        execution = result.execution
        for what in ("first", "long", "last"):
            assert journal.count(f"runs:{result.saga_id}:{what}") == 1, (result.saga_id, what)
            bodies.append(1)
        sends += [s.attempt + s.sends for s in execution.steps]
        assert execution.step(1).attempt == 1 and execution.step(1).sends == 0
    for result in backward:
        execution = result.execution
        for what in ("first", "long", "undo_long", "undo_first"):
            assert journal.count(f"runs:{result.saga_id}:{what}") == 1, (result.saga_id, what)
        assert execution.step(1).status is StepStatus.COMPENSATED
        assert execution.step(1).comp_attempt == 1 and execution.step(1).sends == 0
        bodies.append(journal.count(f"runs:{result.saga_id}:undo_long"))
        sends.append(execution.step(1).comp_attempt + execution.step(1).sends)
    assert journal.effects("overlaps") == set()
    assert len(passes) >= seconds / 2, "recovery ran throughout"
    report(
        {
            "test": "long steps",
            "store": processes.store.split(":")[0],
            "step_seconds": seconds,
            "lease_seconds": lease,
            "recovery_passes": len(passes),
            "bodies_per_step": sum(bodies) / len(bodies),
            "sends_per_step": sum(sends) / len(sends),
        }
    )


def test_a_frozen_worker_is_taken_over_after_its_lease_and_its_late_success_undone(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    """SIGSTOP inside a step: takeover after the lease, compensation, then the late success."""
    env = processes.env(SAGA_E2E_CONF=json.dumps(CONF))
    frozen = worker_processes("worker_app", [processes.queue], 1, env)
    app, (scenarios, _) = processes.app(conf=CONF)
    leases, journal = scenarios.leases, scenarios.journal
    result = leases.frozen.run(seconds=6, comp_seconds=0, fail_retaken=True)
    sid = result.saga_id
    wait_for(lambda: journal.flag(f"long-started:{sid}"), 30, "attempt 1 to be in its body")
    wait_for(
        lambda: result.execution.step(1).lease_owner is not None, 2 * LEASE, "its lease claimed"
    )
    os.killpg(frozen.proc.pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        worker_processes("worker_app", [processes.queue], 1, env)  # where attempt 2 runs
        with recovery_every(app, 0.5):
            wait_for(lambda: result.execution.step(1).attempt >= 2, 30, "the takeover")
            taken_at = result.execution.step(1).sent_at
            wait_for(lambda: result.status is SagaStatus.COMPENSATED, 30, "compensation")
            assert journal.effects("undone") == {f"{sid}:first"}
            os.killpg(frozen.proc.pid, signal.SIGCONT)
            late = lambda: (result.execution.step(1).late or {}).get("1", {})  # noqa: E731
            wait_for(lambda: late().get("state") == "compensated", 30, "the late success undone")
            wait_for(lambda: result.status is SagaStatus.COMPENSATED, 30, "compensated again")
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)
    execution = result.execution
    assert execution.step(1).status is StepStatus.FAILED  # attempt 2 refused to run again
    assert late()["compensation_data"] == {"attempt": 1, "comp_seconds": 0}
    assert journal.effects("effects") == {f"{sid}:first", f"{sid}:long:1"}
    assert journal.effects("undone") == {f"{sid}:first", f"{sid}:long:1"}, "every effect undone"
    assert journal.count(f"runs:{sid}:undo_long") == 1
    assert taken_at is not None
    takeover = taken_at - stopped_at
    assert LEASE * 0.5 <= takeover <= 3 * LEASE + 2, takeover
    report(
        {
            "test": "frozen worker",
            "store": processes.store.split(":")[0],
            "lease_seconds": LEASE,
            "sigstop_to_takeover_seconds": round(takeover, 2),
        }
    )


def test_a_redelivered_compensation_waits_for_the_lease_and_never_runs_twice_at_once(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    """Redis broker redelivery (visibility timeout) of a compensation that is running."""
    from kombu import Connection

    env = processes.env(SAGA_E2E_CONF=json.dumps(CONF))
    workers = [
        worker_processes("worker_app", [processes.queue], 4, env, pool="threads") for _ in range(2)
    ]
    _app, (scenarios, _) = processes.app(conf=CONF)
    leases, journal = scenarios.leases, scenarios.journal
    result = leases.long_compensation.run(seconds=0.05, comp_seconds=6, fail_last=True)
    sid = result.saga_id
    wait_for(lambda: journal.count(f"busy:{sid}:undo_long") == 1, 30, "the compensation to run")
    # What kombu's Redis transport does once a message stays unacknowledged longer than
    # its visibility timeout: put it back on the queue, for any worker to take.
    logs = lambda: "".join(worker.log() for worker in workers)  # noqa: E731
    with Connection(processes.broker, transport_options={"visibility_timeout": 1}) as conn:
        qos = conn.default_channel.qos
        wait_for(
            lambda: qos.restore_visible(interval=1) or "waiting for its lease" in logs(),
            10,
            "the redelivered copy to arrive and wait for the lease",
        )
    with pytest.raises(SagaCompensated):
        result.get(timeout=60)
    assert journal.count(f"runs:{sid}:undo_long") == 1, "the body ran once"
    assert journal.effects("overlaps") == set()


def test_a_task_no_worker_has_fails_the_step_at_once_naming_it(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    env = processes.env(SAGA_E2E_CONF=json.dumps(CONF))
    worker_processes("worker_app", [processes.queue], 2, env)
    _app, (scenarios, _) = processes.app(conf=CONF)
    result = scenarios.leases.unknown_task.run()
    started = time.monotonic()
    with pytest.raises(SagaCompensated, match=r"warehouse\.shipp"):
        result.get(timeout=30)  # no recovery pass runs in this test
    assert time.monotonic() - started < 20
    step = result.execution.step(1)
    assert step.status is StepStatus.FAILED
    assert "'warehouse.shipp' is not registered on worker" in (step.error or "")
    assert scenarios.journal.effects("undone") == {f"{result.saga_id}:first"}


def test_a_step_whose_queue_nobody_consumes_fails_after_the_capped_sends(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    conf = {**CONF, "saga_recovery_stalled_after": 1.0, "saga_recovery_max_sends": 2}
    env = processes.env(SAGA_E2E_CONF=json.dumps(conf))
    worker_processes("worker_app", [processes.queue], 2, env)
    app, (scenarios, _) = processes.app(conf=conf)
    result = scenarios.leases.unserved_queue.run()
    try:
        with recovery_every(app, 0.5), pytest.raises(SagaCompensated):
            result.get(timeout=60)
    finally:
        delete_queues(processes.broker, ["e2e.leases.nobody-consumes-this"])
    step = result.execution.step(1)
    assert step.status is StepStatus.FAILED and step.sends == 2
    assert "'warehouse.ship'" in (step.error or "")
    assert "e2e.leases.nobody-consumes-this" in (step.error or "")
    assert "after 3 sends" in (step.error or "")
    assert scenarios.journal.effects("undone") == {f"{result.saga_id}:first"}


def test_a_step_that_retries_itself_does_not_wait_for_its_own_lease(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    """Celery's autoretry gives the lease back: the retry runs at once, not a lease later."""
    conf = {**CONF, "saga_lease_seconds": 60.0}
    env = processes.env(SAGA_E2E_CONF=json.dumps(conf))
    worker_processes("worker_app", [processes.queue], 2, env)
    _app, (scenarios, _) = processes.app(conf=conf)
    result = scenarios.leases.self_retrying.run(fail_times=3)
    assert result.get(timeout=30)["shaky"] == "done"  # far less than one 60 s lease
    assert scenarios.journal.count(f"runs:{result.saga_id}:shaky") == 4
