"""Retries, compensation failures, deadlines, cancellation, recovery and bad input.

Runs in every environment of the `env` fixture (eager, and real worker threads on
Redis and RabbitMQ brokers with each state store under test).
"""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from e2e_support import Env, wait_for

from celery_saga import (
    SagaCancelled,
    SagaCompensated,
    SagaFailed,
    SagaStatus,
    SchemaVersionError,
    StepStatus,
    recover,
    signals,
)
from celery_saga.backends import StepExpect
from celery_saga.cli import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREADABLE, EXIT_USAGE
from celery_saga.cli import saga as saga_cli
from celery_saga.headers import SagaHeader
from celery_saga.models import SagaExecution
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.forward import step_succeeded
from celery_saga.runtime.resume import resume
from celery_saga.runtime.start import new_execution

TIMEOUT = 60


def cli(env: Env, *args: str) -> Any:
    """Run `celery saga ...` in-process against the environment's app."""
    return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=env.app))


def test_compensation_that_fails_twice_then_succeeds_ends_compensated(env: Env) -> None:
    result = env.scenarios.flaky_compensation.run(order_id="d-1", fail=3)
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=TIMEOUT)
    events = env.scenarios.journal.events(result.saga_id)
    assert events == [
        "do1",
        "flaky_step",
        "do3",
        "flaky_undo:try1",
        "flaky_undo:try2",
        "flaky_undo:try3",
        "undo1",
    ]
    step = info.value.execution.step(1)
    assert step.status is StepStatus.COMPENSATED and step.comp_attempt == 3
    assert step.comp_error is None


def test_compensation_that_always_fails_ends_failed_then_retry_fixes_it(env: Env) -> None:
    env.scenarios.journal.set_flag("refunds_broken", True)
    try:
        result = env.scenarios.broken_compensation.run(order_id="d-2", fail=3)
        with pytest.raises(SagaFailed) as info:
            result.get(timeout=TIMEOUT)
    finally:
        env.scenarios.journal.set_flag("refunds_broken", False)
    execution = info.value.execution
    broken, first = execution.step(1), execution.step(0)
    assert broken.status is StepStatus.COMPENSATION_FAILED
    assert "refund system is down" in broken.comp_error and broken.comp_attempt == 4
    assert first.status is StepStatus.COMPENSATED  # the other compensation was still done
    events = env.scenarios.journal.events(result.saga_id)
    assert events.count("broken_undo") == 4 and events[-1] == "undo1"
    assert "refund system is down" in str(info.value)

    # The fault is fixed; an operator retries from the command line.
    outcome = cli(env, "retry", result.saga_id)
    assert outcome.exit_code == 0, outcome.output
    wait_for(lambda: result.status is SagaStatus.COMPENSATED, TIMEOUT, "the retried saga")
    assert result.execution.step(1).status is StepStatus.COMPENSATED
    assert env.scenarios.journal.events(result.saga_id).count("broken_undo") == 5
    assert cli(env, "retry", result.saga_id).exit_code == EXIT_REFUSED


def test_failed_compensation_resolved_by_hand_is_recorded(env: Env) -> None:
    env.scenarios.journal.set_flag("refunds_broken", True)
    try:
        result = env.scenarios.broken_compensation.run(order_id="d-3", fail=3)
        with pytest.raises(SagaFailed):
            result.get(timeout=TIMEOUT)
    finally:
        env.scenarios.journal.set_flag("refunds_broken", False)
    outcome = cli(env, "resolve", result.saga_id, "1", "--note", "refunded in the bank portal")
    assert outcome.exit_code == 0, outcome.output
    execution = result.execution
    assert execution.status is SagaStatus.COMPENSATED
    assert execution.step(1).comp_error.startswith("resolved by hand: refunded in the bank portal")
    assert cli(env, "resolve", result.saga_id, "1", "--note", "again").exit_code == EXIT_REFUSED


def test_saga_over_its_deadline_compensates(env: Env) -> None:
    result = env.scenarios.deadline.run(order_id="d-4", sleep=1.5)
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=TIMEOUT)
    execution = info.value.execution
    assert "deadline exceeded" in execution.error
    assert execution.deadline_at == pytest.approx(execution.created_at + 1.0)
    statuses = [s.status for s in execution.steps]
    assert statuses[:2] == [StepStatus.COMPENSATED, StepStatus.COMPENSATED]
    assert statuses[2] in (StepStatus.PENDING, StepStatus.SKIPPED)  # never ran
    events = env.scenarios.journal.events(result.saga_id)
    assert events == ["do1", "slow", "undo2", "undo1"]


def test_cancel_lets_the_running_step_finish_then_compensates(env: Env) -> None:
    if env.app.conf.task_always_eager:
        pytest.skip("eager mode runs the whole saga inside run(): there is nothing to cancel")
    hold = f"c-{threading.get_ident()}-{id(env)}"
    env.scenarios.journal.set_flag(f"hold:{hold}", True)
    try:
        result = env.scenarios.gated.run(order_id="d-5", hold=hold)
        wait_for(
            lambda: "gate:entered" in env.scenarios.journal.events(result.saga_id),
            TIMEOUT,
            "the gated step to start",
        )
        assert result.cancel(reason="customer changed their mind")
        assert not result.cancel()  # once
    finally:
        env.scenarios.journal.set_flag(f"hold:{hold}", False)
    with pytest.raises(SagaCancelled) as info:
        result.get(timeout=TIMEOUT)
    execution = info.value.execution
    assert execution.status is SagaStatus.CANCELLED and execution.cancelled_at is not None
    assert execution.error == "cancelled: customer changed their mind"
    assert [s.status for s in execution.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
    ]
    events = env.scenarios.journal.events(result.saga_id)
    assert events == ["do1", "gate:entered", "gate:left", "undo2", "undo1"]
    outcome = cli(env, "cancel", result.saga_id)
    assert outcome.exit_code == EXIT_REFUSED and "only running sagas" in outcome.output


def test_retry_policy_retries_a_step_as_new_attempts(env: Env) -> None:
    result = env.scenarios.retrying.run(order_id="d-6", fail_times=2)
    assert result.get(timeout=TIMEOUT)["tries"] == 3
    step = result.execution.step(1)
    assert step.attempt == 3 and step.task_id.endswith("-s1-3")
    failing = env.scenarios.retrying.run(order_id="d-7", fail_times=10)
    with pytest.raises(SagaCompensated) as info:
        failing.get(timeout=TIMEOUT)
    step = info.value.execution.step(1)
    assert step.status is StepStatus.FAILED and step.attempt == 4  # 1 try + 3 retries
    assert "upstream unavailable (try 4)" in step.error
    assert env.scenarios.journal.events(failing.saga_id)[-1] == "undo1"


def test_output_over_the_size_limit_fails_the_step_clearly(env: Env) -> None:
    result = env.scenarios.big_output.run(order_id="d-8", size=1_100_000)
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=TIMEOUT)
    step = info.value.execution.step(1)
    assert step.status is StepStatus.FAILED and step.output is None
    assert "saga_output_max_bytes" in step.error and "step 1" in step.error
    assert env.scenarios.journal.events(result.saga_id) == ["do1", "big", "undo1"]


def test_signals_and_log_records_name_the_saga(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str]] = []

    def receiver(signal: Any = None, sender: Any = None, saga_id: str = "", **kw: Any) -> None:
        seen.append((signal.name, saga_id))

    for sig in (
        signals.saga_started,
        signals.step_succeeded,
        signals.saga_completed,
        signals.step_failed,
        signals.saga_compensated,
    ):
        sig.connect(receiver, weak=False)
    try:
        with caplog.at_level(logging.INFO, logger="celery_saga"):
            ok = env.scenarios.five.run(order_id="d-9", amount=1)
            ok.get(timeout=TIMEOUT)
            bad = env.scenarios.five.run(order_id="d-9", amount=1, fail=2)
            with pytest.raises(SagaCompensated):
                bad.get(timeout=TIMEOUT)
            # Signals are sent right after the state change they announce.
            wait_for(lambda: ("saga_compensated", bad.saga_id) in seen, TIMEOUT, "the signal")
    finally:
        for sig in (
            signals.saga_started,
            signals.step_succeeded,
            signals.saga_completed,
            signals.step_failed,
            signals.saga_compensated,
        ):
            sig.disconnect(receiver)
    mine = [name for name, sid in seen if sid == ok.saga_id]
    assert mine.count("step_succeeded") == 5 and mine[0] == "saga_started"
    assert mine[-1] == "saga_completed"
    theirs = [name for name, sid in seen if sid == bad.saga_id]
    assert "step_failed" in theirs and "saga_compensated" in theirs, theirs
    records = [r for r in caplog.records if getattr(r, "saga_id", None) == bad.saga_id]
    assert records and all(hasattr(r, "saga_step") for r in records)
    assert any(r.saga_step == 1 and "failed" in r.getMessage() for r in records)


# -- recovery -----------------------------------------------------------------------------------


def _lost(env: Env, saga: Any, **input: Any) -> SagaExecution:
    """An execution whose first step started and then lost its worker (no message left)."""
    rt = Runtime.of(saga)
    execution = new_execution(rt.definition, input, None, None)
    execution.status = SagaStatus.RUNNING
    execution.updated_at = execution.created_at = execution.created_at - 3600
    rt.backend.create(execution)
    rt.backend.update_step(
        execution.saga_id, 0, {"status": StepStatus.RUNNING, "attempt": 1, "started_at": 1.0}
    )
    return execution


def test_recovery_redispatches_a_lost_step_once(env: Env) -> None:
    saga = env.scenarios.five
    execution = _lost(env, saga, order_id="r-1", amount=1)
    report = recover(env.app, stalled_after=0)
    ours = [r for r in report.resumed if r.saga_id == execution.saga_id]
    assert ours and ours[0].acted and "re-dispatched steps [0]" in ours[0].action
    result = saga.result(execution.saga_id)
    assert result.get(timeout=TIMEOUT)["out5"] == 5
    assert result.execution.step(0).attempt == 2
    assert env.scenarios.journal.events(execution.saga_id) == ["do1", "do2", "do3", "do4", "do5"]
    again = recover(env.app, stalled_after=0)
    assert execution.saga_id not in {r.saga_id for r in again.resumed}


def test_two_recoverers_at_once_dispatch_a_lost_step_once(env: Env) -> None:
    saga = env.scenarios.five
    execution = _lost(env, saga, order_id="r-2", amount=1)
    rt = Runtime.of(saga)
    stored = rt.backend.get(execution.saga_id)
    barrier = threading.Barrier(4)
    outcomes: list[Any] = []

    def run() -> None:
        barrier.wait()
        outcomes.append(resume(rt, stored))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(o.acted for o in outcomes) == 1
    saga.result(execution.saga_id).get(timeout=TIMEOUT)
    assert env.scenarios.journal.events(execution.saga_id).count("do1") == 1


def test_recovery_acts_on_a_recorded_outcome_and_restarts_compensation(env: Env) -> None:
    saga = env.scenarios.five
    rt = Runtime.of(saga)
    # Step 0 finished and was recorded, but the worker died before dispatching step 1.
    execution = _lost(env, saga, order_id="r-3", amount=1)
    rt.backend.update_step(
        execution.saga_id,
        0,
        {"status": StepStatus.SUCCESS, "output": {"out1": 1}},
        count_in="stage:0",
    )
    recover(env.app, stalled_after=0)
    result = saga.result(execution.saga_id)
    assert result.get(timeout=TIMEOUT)["out5"] == 5
    assert env.scenarios.journal.events(execution.saga_id) == ["do2", "do3", "do4", "do5"]

    # A compensation was dispatched and lost.
    stalled = _lost(env, saga, order_id="r-4", amount=1)
    rt.backend.update_step(
        stalled.saga_id,
        0,
        {
            "status": StepStatus.COMPENSATING,
            "comp_attempt": 1,
            "output": {"out1": 1},
            "compensation_data": {"out1": 1},
        },
    )
    rt.backend.update_step(
        stalled.saga_id, 1, {"status": StepStatus.FAILED, "error": "boom"}, count_in="stage:1"
    )
    rt.backend.update_saga(stalled.saga_id, {"status": SagaStatus.COMPENSATING})
    recover(env.app, stalled_after=0)
    result = saga.result(stalled.saga_id)
    with pytest.raises(SagaCompensated):
        result.get(timeout=TIMEOUT)
    assert result.execution.step(0).comp_attempt == 2
    assert env.scenarios.journal.events(stalled.saga_id) == ["undo1"]


# -- bad input: a clear error, and nothing stored is lost ------------------------------------


def test_cli_refuses_malformed_and_unknown_ids(env: Env) -> None:
    bad = cli(env, "show", "1; DROP TABLE sagas")
    assert bad.exit_code == EXIT_USAGE and "is not a saga id" in bad.output
    unknown = cli(env, "show", "3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d")
    assert unknown.exit_code == EXIT_NOT_FOUND and "no saga" in unknown.output
    for command in (["cancel"], ["retry"]):
        assert cli(env, *command, "not-an-id").exit_code == EXIT_USAGE
    assert cli(env, "purge", "--older-than", "soon", "--yes").exit_code == EXIT_USAGE


def test_changed_definition_refuses_to_advance_and_keeps_the_outcome(env: Env) -> None:
    saga = env.scenarios.five
    rt = Runtime.of(saga)
    execution = new_execution(rt.definition, {"order_id": "b-1", "amount": 1}, None, None)
    execution.status = SagaStatus.RUNNING
    execution.definition_hash = "0000000000000000"  # started by an older definition
    rt.backend.create(execution)
    header = SagaHeader(execution.saga_id, saga.name, 0, 1, False, "0000000000000000")
    rt.backend.update_step(
        execution.saga_id, 0, {"status": StepStatus.RUNNING, "attempt": 1}, expect=StepExpect()
    )
    step_succeeded(rt, header, {"out1": 1}, {"out1": 1})
    stored = rt.backend.get(execution.saga_id)
    assert stored.step(0).status is StepStatus.SUCCESS and stored.step(0).output == {"out1": 1}
    assert stored.step(1).status is StepStatus.PENDING  # not advanced
    assert "will not guess" in stored.error and rt.definition.hash in stored.error
    assert env.scenarios.journal.events(execution.saga_id) == []


def test_record_from_a_newer_schema_is_refused_and_left_untouched(env: Env) -> None:
    rt = Runtime.of(env.scenarios.five)
    execution = new_execution(rt.definition, {"order_id": "b-2"}, None, None)
    execution.schema = 99
    rt.backend.create(execution)
    with pytest.raises(SchemaVersionError, match="upgrade celery-saga-core"):
        rt.backend.get(execution.saga_id)
    outcome = cli(env, "show", execution.saga_id)
    assert outcome.exit_code == EXIT_UNREADABLE
    assert "schema version 99" in outcome.output
    assert "Traceback" not in outcome.output
    listed = {s.saga_id for s in rt.backend.list(limit=1000).items}
    assert execution.saga_id in listed  # still stored
