"""Core's trace hooks (`celery_saga.tracing`), with a recording implementation, in eager mode.

What a tracing package is told, and when: the saga's creation (its carrier kept on the
record and carried in every saga header), each message's headers, each attempt with its
place in the saga and whether it was sent again, and each failure. With no hooks set,
nothing is carried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery

from celery_saga import RetryPolicy, Saga, SagaCompensated, SagaStatus, current_step, tracing
from celery_saga.backends import MemorySagaBackend
from celery_saga.headers import HEADER, SagaHeader
from celery_saga.ids import new_saga_id

CARRIER = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}


class Recorder:
    """Trace hooks that remember what they were told."""

    def __init__(self) -> None:
        self.runs: list[tracing.SagaRun] = []
        self.headers: list[dict[str, Any]] = []
        self.attempts: list[tracing.Attempt] = []
        self.failures: list[tuple[tracing.Attempt, BaseException]] = []

    @contextmanager
    def saga_created(self, run: tracing.SagaRun) -> Iterator[dict[str, str] | None]:
        self.runs.append(run)
        yield dict(CARRIER)

    def inject(self, headers: dict[str, Any]) -> None:
        headers["x-context"] = "sender"
        self.headers.append(headers)

    @contextmanager
    def attempt(self, attempt: tracing.Attempt) -> Iterator[Any]:
        self.attempts.append(attempt)
        failures = self.failures

        class Scope:
            def failed(self, exc: BaseException) -> None:
                failures.append((attempt, exc))

        yield Scope()


@pytest.fixture
def app() -> Celery:
    app = Celery("trace-hooks", broker="memory://", set_as_current=False)
    app.conf.update(
        task_always_eager=True,
        saga_backend=MemorySagaBackend(),
        saga_compensation_retry_backoff=0,
    )
    return app


@pytest.fixture
def hooks() -> Iterator[Recorder]:
    recorder = Recorder()
    tracing.set_trace_hooks(recorder)
    try:
        yield recorder
    finally:
        tracing.set_trace_hooks(None)


def _order(app: Celery, carried: list[Any]) -> Saga:
    def step(what: str) -> Any:
        @app.task(shared=False, name=f"th.{what}")
        def run(**kw: Any) -> dict[str, Any]:
            header = current_step()
            carried.append(header and header.trace)
            if kw.get("fail") == what:
                raise RuntimeError(f"{what} failed")
            return {what: True}

        return run

    def undo(what: str) -> Any:
        @app.task(shared=False, name=f"th.undo_{what}")
        def run(data: Any) -> None:
            header = current_step()
            carried.append(header and header.trace)

        return run

    return (
        Saga("th.order", app=app)
        .add_step(step("a"), compensate=undo("a"))
        .add_parallel((step("b"), undo("b")), (step("c"), undo("c")))
        .add_step(step("d"), no_compensation=True)
    )


def test_hooks_are_told_of_the_saga_its_messages_attempts_and_failures(
    app: Celery, hooks: Recorder
) -> None:
    carried: list[Any] = []
    order = _order(app, carried)
    result = order.run(order_id="t-1", fail="d")
    with pytest.raises(SagaCompensated):
        result.get(timeout=10)
    (run,) = hooks.runs
    assert (run.saga_name, run.saga_id, run.parent_id, run.existing_id) == (
        "th.order",
        result.saga_id,
        None,
        None,
    )
    assert result.execution.trace_context == CARRIER
    assert carried == [CARRIER] * 7  # 4 steps, 3 compensations: every saga header carries it
    # Every message's headers went through inject, next to the saga header.
    assert len(hooks.headers) == 7
    for headers in hooks.headers:
        header = SagaHeader.from_dict(headers[HEADER])
        assert header is not None and header.trace == CARRIER and not header.revert
        assert headers["x-context"] == "sender"
    seen = [(a.part, a.task_name, a.index, a.stage, a.attempt, a.resent) for a in hooks.attempts]
    assert seen[:4] == [
        ("step", "th.a", 0, 0, 1, False),
        ("step", "th.b", 1, 1, 1, False),
        ("step", "th.c", 2, 1, 1, False),
        ("step", "th.d", 3, 2, 1, False),
    ]
    assert sorted(seen[4:]) == [
        ("compensation", "th.undo_a", 0, 0, 1, False),
        ("compensation", "th.undo_b", 1, 1, 1, False),
        ("compensation", "th.undo_c", 2, 1, 1, False),
    ]
    assert all(a.saga_id == result.saga_id and a.trace_context == CARRIER for a in hooks.attempts)
    assert all(a.task_id for a in hooks.attempts)
    ((failed, exc),) = hooks.failures
    assert failed.task_name == "th.d" and str(exc) == "d failed"


def test_a_run_that_finds_its_execution_by_idempotency_key_says_so(
    app: Celery, hooks: Recorder
) -> None:
    order = _order(app, [])
    first = order.run(order_id="t-2", idempotency_key="order-t-2")
    again = order.run(order_id="t-2", idempotency_key="order-t-2")
    assert again.saga_id == first.saga_id
    assert [r.existing_id for r in hooks.runs] == [None, first.saga_id]
    assert hooks.runs[1].saga_id != first.saga_id  # the id a new execution would have had


def test_retried_attempts_and_reverted_compensations_are_resent(
    app: Celery, hooks: Recorder
) -> None:
    tries: list[int] = []

    @app.task(shared=False, name="th.flaky")
    def flaky(**kw: Any) -> dict[str, Any]:
        tries.append(1)
        if len(tries) <= 2:
            raise ConnectionError(f"try {len(tries)}")
        return {"tries": len(tries)}

    @app.task(shared=False, name="th.undo_flaky")
    def undo_flaky(data: Any) -> None:
        pass

    retry = RetryPolicy(max_retries=3, backoff=0, jitter=False, retry_on=(ConnectionError,))
    saga = Saga("th.flaky", app=app).add_step(flaky, compensate=undo_flaky, retry=retry)
    result = saga.run(order_id="t-3")
    assert result.get(timeout=10) == {"order_id": "t-3", "tries": 3}
    assert [(a.attempt, a.resent) for a in hooks.attempts] == [(1, False), (2, True), (3, True)]
    assert [str(exc) for _, exc in hooks.failures] == ["try 1", "try 2"]
    result.revert("returned")
    assert result.status is SagaStatus.REVERTED
    (undo,) = hooks.attempts[3:]
    assert (undo.part, undo.attempt, undo.resent) == ("compensation", 1, True)
    header = SagaHeader.from_dict(hooks.headers[-1][HEADER])
    assert header is not None and header.revert and header.trace == CARRIER


def test_without_hooks_nothing_is_carried(app: Celery) -> None:
    assert tracing.hooks is None
    carried: list[Any] = []
    result = _order(app, carried).run(order_id="t-4")
    result.get(timeout=10)
    assert result.execution.trace_context is None
    assert carried == [None] * 4


def test_the_saga_header_carries_a_trace_context_and_refuses_a_hostile_one() -> None:
    sid = new_saga_id()
    header = SagaHeader(sid, "n", 1, 2, compensation=True, trace=CARRIER, revert=True)
    wire = header.to_dict()
    assert wire["t"] == CARRIER and wire["rv"] == 1
    assert SagaHeader.from_dict(wire) == header
    plain = SagaHeader(sid, "n", 1, 2).to_dict()
    assert "t" not in plain and "rv" not in plain
    for hostile in (
        "00-abc",
        ["traceparent"],
        {"traceparent": 1},
        {"traceparent": "x" * 5000},
        {},
    ):
        parsed = SagaHeader.from_dict({**wire, "t": hostile})
        assert parsed is not None and parsed.trace is None, hostile
    mixed = SagaHeader.from_dict({**wire, "t": {**CARRIER, "tracestate": ["no"]}})
    assert mixed is not None and mixed.trace == CARRIER
