"""Who ran each attempt, and the history of attempts that are over, on real workers.

Runs for each store under test with an in-process worker (threads) on a Redis broker,
and eagerly on the memory store. The worker has a known hostname, which every step
record must name; a retried step, a retried compensation (by its policy or an
operator) and attempts taken over by recovery must each leave one history entry, in
order, with its times and error, while a saga whose steps all succeed the first time
keeps no history at all.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from e2e_support import broker_url, delete_queues, wait_for
from kombu.asynchronous import set_event_loop
from support import STORES, state_store

from celery_saga import (
    RetryPolicy,
    Saga,
    SagaCompensated,
    SagaFailed,
    SagaStatus,
    StepStatus,
    current_step,
    recover,
)
from celery_saga.models import SagaExecution, StepRecord
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.operator import retry_compensations
from celery_saga.runtime.start import new_execution
from celery_saga.runtime.workers import process_name

TIMEOUT = 60
_SETUPS = [*(f"worker-{store}" for store in STORES), *(["eager"] if "memory" in STORES else [])]


class Tries:
    """How many times each task ran for each saga (the worker's threads share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def next(self, what: str) -> int:
        header = current_step()
        key = (header.saga_id if header else "-", what)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]


@dataclass
class Setup:
    """An app with its sagas, and the name its worker records."""

    app: Celery
    flaky: Saga
    plain: Saga
    broken: Saga
    refunds_down: threading.Event
    worker: str


def _sagas(app: Celery, tag: str) -> tuple[Saga, Saga, Saga, threading.Event]:
    """A saga whose middle step fails twice (retried) and whose compensation fails once,
    a plain saga of three steps, and a saga whose middle compensation fails while the
    returned switch is on."""
    tries = Tries()
    refunds_down = threading.Event()

    def task(name: str) -> Any:
        @app.task(shared=False, name=f"hist-{tag}.{name}")  # type: ignore[untyped-decorator]
        def run(**kw: Any) -> dict[str, Any]:
            return {name: True}

        return run

    def undo(name: str) -> Any:
        @app.task(shared=False, name=f"hist-{tag}.undo_{name}")  # type: ignore[untyped-decorator]
        def run(data: Any) -> None:
            return None

        return run

    @app.task(shared=False, name=f"hist-{tag}.flaky")  # type: ignore[untyped-decorator]
    def flaky(**kw: Any) -> dict[str, Any]:
        n = tries.next("flaky")
        if n <= 2:
            raise ConnectionError(f"upstream unavailable (try {n})")
        return {"tries": n}

    @app.task(shared=False, name=f"hist-{tag}.undo_flaky")  # type: ignore[untyped-decorator]
    def undo_flaky(data: Any) -> None:
        n = tries.next("undo_flaky")
        if n <= 1:
            raise ConnectionError(f"refund service unavailable (try {n})")

    @app.task(shared=False, name=f"hist-{tag}.decline")  # type: ignore[untyped-decorator]
    def decline(**kw: Any) -> dict[str, Any]:
        raise RuntimeError("card declined")

    @app.task(shared=False, name=f"hist-{tag}.refund")  # type: ignore[untyped-decorator]
    def refund(data: Any) -> None:
        if refunds_down.is_set():
            raise RuntimeError("refund system is down")

    retry = RetryPolicy(max_retries=3, backoff=0.01, jitter=False, retry_on=(ConnectionError,))
    flaky_saga = (
        Saga(f"hist-{tag}.flaky")
        .add_step(task("reserve"), compensate=undo("reserve"))
        .add_step(flaky, compensate=undo_flaky, retry=retry)
        .add_step(decline)
    )
    plain = Saga(f"hist-{tag}.plain")
    for name in ("one", "two", "three"):
        plain.add_step(task(name), compensate=undo(name))
    broken = (
        Saga(f"hist-{tag}.broken")
        .add_step(task("hold"), compensate=undo("hold"))
        .add_step(task("charge"), compensate=refund)
        .add_step(decline)
    )
    return flaky_saga, plain, broken, refunds_down


@pytest.fixture(scope="module", params=_SETUPS)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    tag = os.urandom(4).hex()
    queue = f"hist-{tag}"
    eager = request.param == "eager"
    kind = "memory" if eager else request.param.removeprefix("worker-")
    with state_store(kind, tag, tempfile.gettempdir()) as store:
        if eager:
            app = Celery(f"hist-{tag}", broker="memory://", set_as_current=False)
            app.conf.update(
                task_always_eager=True, saga_backend=store, saga_compensation_retry_backoff=0
            )
            yield Setup(app, *_sagas(app, tag), worker=process_name())
            return
        broker = broker_url("redis")
        app = Celery(f"hist-{tag}", broker=broker, set_as_current=False)
        app.conf.update(
            task_default_queue=queue,
            saga_backend=store,
            saga_compensation_retry_backoff=0.01,
            broker_connection_retry_on_startup=True,
        )
        sagas = _sagas(app, tag)
        set_event_loop(None)  # each in-process worker needs its own event loop (see conftest)
        try:
            with start_worker(
                app,
                pool="threads",
                concurrency=4,
                perform_ping_check=False,
                queues=[queue],
                shutdown_timeout=30,
            ) as worker:  # its node name: Celery 5.3's start_worker takes no hostname
                yield Setup(app, *sagas, worker=worker.hostname)
        finally:
            set_event_loop(None)
            delete_queues(broker, [queue])


def _ordered(entries: list[dict[str, Any]]) -> None:
    """Each entry started before it finished, and after the one before it finished."""
    for entry in entries:
        assert entry["finished_at"] is not None
        if entry["started_at"] is not None:
            assert entry["started_at"] <= entry["finished_at"], entry
    for before, after in itertools.pairwise(entries):
        assert before["finished_at"] <= (after["started_at"] or after["finished_at"])


def test_retries_and_a_retried_compensation_are_kept_in_the_history(setup: Setup) -> None:
    result = setup.flaky.run(order_id="h-1")
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=TIMEOUT)
    reserve, flaky, decline = info.value.execution.steps
    assert (reserve.status, flaky.status, decline.status) == (
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    )
    assert (flaky.attempt, flaky.comp_attempt) == (3, 2)
    # Who ran them: every forward attempt and every compensation, on the one worker.
    assert [s.worker for s in (reserve, flaky, decline)] == [setup.worker] * 3
    assert [s.comp_worker for s in (reserve, flaky, decline)] == [setup.worker] * 2 + [None]
    # The steps that ran once keep no history.
    assert (reserve.history, decline.history) == (None, None)
    history = flaky.history
    assert history is not None
    assert [(e["part"], e["attempt"], e["outcome"]) for e in history] == [
        ("forward", 1, "retried"),
        ("forward", 2, "retried"),
        ("compensation", 1, "failed"),
    ]
    assert [e["error"] for e in history] == [
        "ConnectionError: upstream unavailable (try 1)",
        "ConnectionError: upstream unavailable (try 2)",
        "ConnectionError: refund service unavailable (try 1)",
    ]
    assert {e["worker"] for e in history} == {setup.worker}
    assert all(e["started_at"] is not None for e in history)
    _ordered(history)
    # The current attempts came after the ones that are over.
    _after(history[1], flaky.started_at)
    assert flaky.finished_at is not None and flaky.finished_at <= history[2]["started_at"]
    _after(history[2], flaky.comp_started_at)


def _after(entry: dict[str, Any], started_at: float | None) -> None:
    assert started_at is not None and entry["finished_at"] <= started_at


def test_a_saga_whose_steps_succeed_at_once_keeps_no_history(setup: Setup) -> None:
    result = setup.plain.run(order_id="h-2")
    output = result.get(timeout=TIMEOUT)
    assert (output["one"], output["two"], output["three"]) == (True, True, True)
    execution = result.execution
    assert execution is not None
    steps = execution.steps
    assert [(s.status, s.attempt) for s in steps] == [(StepStatus.SUCCESS, 1)] * 3
    assert [s.history for s in steps] == [None] * 3
    assert [s.worker for s in steps] == [setup.worker] * 3
    assert [s.comp_worker for s in steps] == [None] * 3


def _stalled(setup: Setup, saga: Saga, changes: dict[int, dict[str, Any]]) -> SagaExecution:
    """An execution of `saga` an hour old, its steps written as `changes` say (a lost worker)."""
    rt = Runtime.of(saga)
    execution = new_execution(rt.definition, {"order_id": "h-3"}, None, None)
    execution.status = SagaStatus.RUNNING
    execution.updated_at = execution.created_at = execution.created_at - 3600
    rt.backend.create(execution)
    for index, step in changes.items():
        rt.backend.update_step(execution.saga_id, index, step)
    return execution


def test_attempts_taken_over_by_recovery_are_kept_in_the_history(setup: Setup) -> None:
    # A forward attempt whose worker died: its lease expired long ago.
    dead = "gone-host/123/456/task-1"
    lost = _stalled(
        setup,
        setup.plain,
        {
            0: {
                "status": StepStatus.RUNNING,
                "attempt": 1,
                "started_at": 1.0,
                "worker": "celery@gone-host",
                "lease_owner": dead,
                "lease_expires_at": 2.0,
            }
        },
    )
    recover(setup.app, stalled_after=0)
    result = setup.plain.result(lost.saga_id)
    assert result.get(timeout=TIMEOUT)["three"] is True
    done = result.execution
    assert done is not None
    first: StepRecord = done.step(0)
    assert (first.attempt, first.worker) == (2, setup.worker)
    assert first.history is not None and len(first.history) == 1
    entry = first.history[0]
    assert {k: entry[k] for k in ("part", "attempt", "started_at", "worker", "outcome")} == {
        "part": "forward",
        "attempt": 1,
        "started_at": 1.0,
        "worker": "celery@gone-host",
        "outcome": "taken_over",
    }
    assert dead in entry["error"] and "expired" in entry["error"]
    assert entry["finished_at"] <= (first.started_at or 0)

    # A compensation that was sent and never started (its message was lost).
    stalled = _stalled(
        setup,
        setup.plain,
        {
            0: {
                "status": StepStatus.COMPENSATING,
                "attempt": 1,
                "comp_attempt": 1,
                "output": {"one": True},
                "compensation_data": {"one": True},
            },
            1: {"status": StepStatus.FAILED, "attempt": 1, "error": "boom"},
        },
    )
    Runtime.of(setup.plain).backend.update_saga(
        stalled.saga_id, {"status": SagaStatus.COMPENSATING}
    )
    recover(setup.app, stalled_after=0)
    result = setup.plain.result(stalled.saga_id)
    with pytest.raises(SagaCompensated):
        result.get(timeout=TIMEOUT)
    compensated = result.execution
    assert compensated is not None
    undone = compensated.step(0)
    assert (undone.status, undone.comp_attempt, undone.comp_worker) == (
        StepStatus.COMPENSATED,
        2,
        setup.worker,
    )
    assert undone.history is not None
    assert [(e["part"], e["attempt"], e["outcome"], e["started_at"]) for e in undone.history] == [
        ("compensation", 1, "taken_over", None)
    ]
    assert "no worker started it in time" in undone.history[0]["error"]


def test_an_operator_retry_keeps_the_failed_compensation_in_the_history(setup: Setup) -> None:
    setup.refunds_down.set()
    try:
        result = setup.broken.run(order_id="h-4")
        with pytest.raises(SagaFailed):
            result.get(timeout=TIMEOUT)
    finally:
        setup.refunds_down.clear()
    failed = result.execution
    assert failed is not None
    charge = failed.step(1)
    assert (charge.status, charge.comp_attempt) == (StepStatus.COMPENSATION_FAILED, 4)
    # Three tries were retried; the fourth failed for good and is still the current one.
    assert [(e["attempt"], e["outcome"]) for e in charge.history or []] == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]
    assert charge.comp_worker == setup.worker

    assert retry_compensations(Runtime.of(setup.broken), result.saga_id)
    wait_for(lambda: result.status is SagaStatus.COMPENSATED, TIMEOUT, "the retried compensation")
    done = result.execution
    assert done is not None
    charge = done.step(1)
    assert (charge.status, charge.comp_attempt, charge.comp_worker) == (
        StepStatus.COMPENSATED,
        5,
        setup.worker,
    )
    history = charge.history
    assert history is not None
    assert [(e["part"], e["attempt"], e["outcome"]) for e in history] == [
        ("compensation", n, "failed") for n in (1, 2, 3, 4)
    ]
    assert {e["error"] for e in history} == {"RuntimeError: refund system is down"}
    assert {e["worker"] for e in history} == {setup.worker}
    _ordered(history)
    _after(history[-1], charge.comp_started_at)
    assert done.step(0).history is None  # its compensation succeeded at once
