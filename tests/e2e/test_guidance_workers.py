"""What a real worker logs and records when a saga cannot go on, or a step fails on purpose.

A worker runs in this process (threads, on the in-memory broker: no service needed):

- A producer and a worker on different stores: the worker logs once, at ERROR, that it
  has no record of the saga, naming its store and `saga_backend`; it records nothing
  and does not retry. The client's `SagaTimeoutError` points at the same cause.
- A worker that does not know the saga: the note it stores on the execution names the
  worker and says to import the saga's module; the client's timeout carries the note.
- Expected failures (PermanentFailure, a StepOutputError, an exception that fails the
  step for good) are logged once, at WARNING with the saga id, and by Celery at INFO
  without a traceback; `task_failure` receivers and reply errbacks still run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_failure
from e2e_support import wait_for
from kombu.asynchronous import set_event_loop
from support import STORES

from celery_saga import (
    PermanentFailure,
    Saga,
    SagaCompensated,
    SagaStatus,
    SagaTimeoutError,
    StepStatus,
    registry,
    saga_step,
)
from celery_saga.backends import MemorySagaBackend

# Memory stores and the in-memory broker only: once per Celery version, in the memory cells.
pytestmark = pytest.mark.skipif("memory" not in STORES, reason="runs in the memory-store cells")


class Records(logging.Handler):
    """Keeps every record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, logger: str, level: int | None = None) -> list[logging.LogRecord]:
        return [
            r for r in self.records if r.name == logger and (level is None or r.levelno == level)
        ]


@pytest.fixture
def tag() -> str:
    return os.urandom(4).hex()


@pytest.fixture
def app(tag: str) -> Celery:
    app = Celery(f"guide-{tag}", broker="memory://", set_as_current=False)
    app.conf.update(
        task_default_queue=f"guide-{tag}",
        saga_compensation_retry_backoff=0,
        worker_hijack_root_logger=False,  # keep the test's log handlers
    )
    return app


@contextmanager
def worker(app: Celery) -> Iterator[Records]:
    """A thread worker for `app`; yields the records of Celery's tracer and celery_saga."""
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("celery.app.trace", "celery_saga")]
    set_event_loop(None)  # a fresh kombu hub for this worker (see tests/e2e/conftest.py)
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=2,
            perform_ping_check=False,
            queues=[app.conf.task_default_queue],
            shutdown_timeout=30,
        ):
            levels = [lg.level for lg in loggers]
            for lg in loggers:
                lg.addHandler(handler)
                lg.setLevel(logging.DEBUG)
            try:
                yield handler
            finally:
                for lg, level in zip(loggers, levels):
                    lg.removeHandler(handler)
                    lg.setLevel(level)
    finally:
        set_event_loop(None)


def test_a_worker_on_another_store_says_so_once_records_nothing_and_does_not_retry(
    app: Celery, tag: str
) -> None:
    producer_store, worker_store = MemorySagaBackend(), MemorySagaBackend()
    runs: list[str] = []

    @app.task(shared=False, name=f"{tag}.release")
    def release(data: Any) -> None:
        return None

    @saga_step(compensate=release)
    @app.task(shared=False, name=f"{tag}.reserve")
    def reserve(**_: Any) -> dict[str, Any]:
        runs.append("reserve")
        return {"reserved": True}

    name = f"guide-{tag}"
    producer = Saga(name, app=app, backend=producer_store).add_step(reserve)
    # What the worker process sees: the same saga, another store (another ?prefix=).
    worker_view = Saga(name, app=app, backend=worker_store).add_step(reserve)
    assert registry.lookup(name, app) is worker_view
    with worker(app) as logs:
        result = producer.run(order_id="o-1")
        errors = wait_for(
            lambda: logs.of("celery_saga", logging.ERROR), 20, "the worker's error about the store"
        )
        time.sleep(1.0)  # time enough for retries, were there any
        errors = logs.of("celery_saga", logging.ERROR)
        assert len(errors) == 1, [r.getMessage() for r in errors]
        message = errors[0].getMessage()
        assert f"no record of saga {name!r} {result.saga_id} in this worker's store" in message
        assert repr(worker_store) in message and "same `saga_backend`" in message
        assert f"Step 0 ({tag}.reserve) ran, but its outcome could not be recorded" in message
        assert errors[0].saga_id == result.saga_id  # type: ignore[attr-defined]
        assert not [r for r in logs.of("celery_saga") if "retrying" in r.getMessage()]
        assert not logs.of("celery.app.trace", logging.ERROR)  # no second, Celery traceback
        assert runs == ["reserve"]
        assert worker_store.list().items == []  # nothing recorded in the worker's store
        execution = producer_store.get(result.saga_id)
        assert execution is not None and execution.status is SagaStatus.RUNNING
        assert execution.step(0).status is StepStatus.RUNNING  # as the producer left it
        with pytest.raises(SagaTimeoutError) as info:
            result.get(timeout=0.2)
    timeout = str(info.value)
    assert "it is RUNNING, waiting for step 0" in timeout
    assert repr(producer_store) in timeout and f"no record of saga {result.saga_id}" in timeout


def test_a_worker_that_does_not_know_the_saga_leaves_a_note_the_timeout_carries(
    app: Celery, tag: str
) -> None:
    store = MemorySagaBackend()
    app.conf.saga_backend = store

    @app.task(shared=False, name=f"{tag}.undo")
    def undo(data: Any) -> None:
        return None

    @saga_step(compensate=undo)
    @app.task(shared=False, name=f"{tag}.ship")
    def ship(**_: Any) -> dict[str, Any]:
        return {"shipped": True}

    order = Saga(f"guide-{tag}", app=app).add_step(ship)
    result = order.run(order_id="o-2")  # sent before any worker runs
    registry.unregister(order.name)  # the worker does not import the saga's module
    with worker(app):
        wait_for(
            lambda: (store.get(result.saga_id) or result.execution).error,  # type: ignore[union-attr]
            20,
            "the note of the worker that does not know the saga",
        )
        with pytest.raises(SagaTimeoutError) as info:
            result.get(timeout=0.2)
    error = info.value
    assert error.status is SagaStatus.RUNNING
    assert error.note is not None
    assert error.note.startswith(f"saga {order.name!r} is not registered on worker ")
    assert "make that worker import the module that defines the saga" in error.note
    assert f"Note on the execution: {error.note}" in str(error)


def test_expected_failures_are_logged_once_at_warning_without_celerys_traceback(
    app: Celery, tag: str
) -> None:
    store = MemorySagaBackend()
    app.conf.saga_backend = store
    failed_tasks: list[str] = []

    def on_failure(sender: Any = None, **_: Any) -> None:
        failed_tasks.append(sender.name)

    task_failure.connect(on_failure, weak=False)

    @app.task(shared=False, name=f"{tag}.undo")
    def undo(data: Any) -> None:
        return None

    @saga_step(compensate=undo)
    @app.task(shared=False, name=f"{tag}.reserve")
    def reserve(**_: Any) -> dict[str, Any]:
        return {"reserved": True}

    @app.task(shared=False, name=f"{tag}.declined")
    def declined(**_: Any) -> None:
        raise PermanentFailure("card declined")

    @app.task(shared=False, name=f"{tag}.unstorable")
    def unstorable(**_: Any) -> Any:
        return {"when": object()}

    @app.task(shared=False, name=f"{tag}.broken")
    def broken(**_: Any) -> None:
        raise ValueError("a bug")

    @app.task(shared=False, name=f"{tag}.named")
    def named(**_: Any) -> None:
        raise PermanentFailure("refused by the other service")

    def saga_failing_at(step: Any, suffix: str) -> Saga:
        return (
            Saga(f"guide-{tag}-{suffix}", app=app)
            .add_step(reserve)
            .add_step(step, no_compensation=True)
        )

    failing: dict[str, Callable[[], Saga]] = {
        "declined": lambda: saga_failing_at(declined, "declined"),
        "unstorable": lambda: saga_failing_at(unstorable, "unstorable"),
        "broken": lambda: saga_failing_at(broken, "broken"),
        "named": lambda: saga_failing_at(f"{tag}.named", "named"),  # by name: errback reports
    }
    try:
        with worker(app) as logs:
            results = {key: make().run(order_id=key) for key, make in failing.items()}
            for result in results.values():
                with pytest.raises(SagaCompensated):
                    result.get(timeout=30)
            time.sleep(0.3)  # the tracer logs after the bookkeeping that ended the saga
    finally:
        task_failure.disconnect(on_failure)

    for key in ("declined", "unstorable", "broken"):
        task = f"{tag}.{key}"
        saga_id = results[key].saga_id
        ours = [
            r
            for r in logs.of("celery_saga", logging.WARNING)
            if f"step {task} failed" in r.getMessage()
        ]
        assert len(ours) == 1, key
        assert ours[0].saga_id == saga_id  # type: ignore[attr-defined]
        assert (ours[0].exc_info is not None) is (key == "broken"), key  # a bug keeps its trace
        traced = [
            r for r in logs.records if r.name == "celery.app.trace" and task in r.getMessage()
        ]
        assert [(r.levelno, "raised expected" in r.getMessage()) for r in traced] == [
            (logging.INFO, True)
        ], key
        assert all(r.exc_info is None for r in traced)
        assert task in failed_tasks  # task_failure receivers still hear of it
    named_step = results["named"].execution.step(1)  # type: ignore[union-attr]
    assert named_step.status is StepStatus.FAILED  # recorded by the reply errback
    assert "refused by the other service" in (named_step.error or "")
