"""What the tracing tests share: the SDK check, the sagas, and reading finished spans.

Importable by test modules (a conftest is not). Nothing here imports the SDK at import
time, so a run without it skips (or, with CI=true, fails) with the reason.
"""

from __future__ import annotations

import importlib
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from support import IN_CI, poll

from celery_saga import RetryPolicy, Saga, current_step

TIMEOUT = 60


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, or fail the test after `timeout`."""
    return poll(condition, timeout, pytest.fail, what)


def require_sdk() -> None:
    """Skip the calling module (fail it with CI=true) when the SDK or the package is missing."""
    for module in ("opentelemetry.sdk.trace", "celery_saga_opentelemetry"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            message = (
                f"{module} is not installed ({exc}); "
                "pip install opentelemetry-sdk packages/celery-saga-opentelemetry"
            )
            if IN_CI:
                pytest.fail(f"{message} (CI=true)", pytrace=False)
            pytest.skip(message, allow_module_level=True)


@dataclass
class Sagas:
    """The sagas of the tracing tests, on one app, and what their tasks saw."""

    order: Saga
    flaky: Saga
    #: Per step or compensation delivery: (task name, its request's ``traceparent``, the
    #: trace carrier in its saga header).
    seen: list[tuple[str, Any, Any]] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def build(app: Celery, tag: str) -> Sagas:
    """An order saga (a step, a parallel group of two, a step that fails when told to,
    each with a compensation) and a saga whose middle step fails twice, then succeeds."""
    name = f"otel-{tag}"
    lock = threading.Lock()
    sagas: Sagas

    def saw(task: Any) -> None:
        header = current_step()
        with lock:
            sagas.seen.append(
                (task.name, getattr(task.request, "traceparent", None), header and header.trace)
            )

    def step(what: str) -> Any:
        @app.task(shared=False, bind=True, name=f"{name}.{what}")
        def run(self: Any, **kw: Any) -> dict[str, Any]:
            saw(self)
            if kw.get("fail") == what:
                raise RuntimeError(f"{what} failed: mail server down")
            return {what: True}

        return run

    def undo(what: str) -> Any:
        @app.task(shared=False, bind=True, name=f"{name}.undo_{what}")
        def run(self: Any, data: Any) -> None:
            saw(self)

        return run

    reserve, charge, ship, notify = (step(w) for w in ("reserve", "charge", "ship", "notify"))
    order = (
        Saga(f"{name}.order")
        .add_step(reserve, compensate=undo("reserve"))
        .add_parallel((charge, undo("charge")), (ship, undo("ship")))
        .add_step(notify, no_compensation=True)
    )

    @app.task(shared=False, bind=True, name=f"{name}.flaky")
    def flaky(self: Any, **kw: Any) -> dict[str, Any]:
        saw(self)
        header = current_step()
        assert header is not None
        with lock:
            sagas.tries[header.saga_id] += 1
            tries = sagas.tries[header.saga_id]
        if tries <= kw["fail_times"]:
            raise ConnectionError(f"upstream unavailable (try {tries})")
        return {"tries": tries}

    retry = RetryPolicy(max_retries=3, backoff=0.01, jitter=False, retry_on=(ConnectionError,))
    flaky_saga = (
        Saga(f"{name}.flaky")
        .add_step(step("first"), compensate=undo("first"))
        .add_step(flaky, no_compensation=True, retry=retry)
    )
    sagas = Sagas(order, flaky_saga)
    return sagas


# -- reading finished spans ---------------------------------------------------------------------


def of_saga(spans: Sequence[Any], saga_id: str) -> list[Any]:
    """The spans that name the saga `saga_id`."""
    return [s for s in spans if s.attributes.get("saga.id") == saga_id]


def named(spans: Sequence[Any], name: str) -> list[Any]:
    """The spans called `name`, by attempt."""
    found = [s for s in spans if s.name == name]
    return sorted(found, key=lambda s: s.attributes.get("saga.step.attempt", 0))


def one(spans: Sequence[Any], name: str) -> Any:
    """The one span called `name`."""
    found = named(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: Any) -> int | None:
    """The span id of `span`'s parent, None for a root."""
    return None if span.parent is None else span.parent.span_id


def link_targets(span: Any) -> list[tuple[int, int, Any]]:
    """(trace id, span id, attributes) of each of `span`'s links."""
    return [
        (link.context.trace_id, link.context.span_id, dict(link.attributes or {}))
        for link in span.links
    ]
