"""The Celery app the benchmark workers run: the same tasks for every contender.

Configured from the environment by `run.py`: ``BENCH_ROLE`` is ``saga`` (state store
``BENCH_STORE``, no result backend: the saga needs none) or ``chain`` (plain Celery
chains of the same tasks, with a Redis result backend to learn when they finished);
``BENCH_BROKER`` is the broker. ``BENCH_COUNT=1`` makes every process report broker
publishes and state-store round trips to Redis.

These sagas are defined on each app, with the task bodies of `bench_tasks`:
``bench.five`` (five no-op steps: W1, W3, W4, W5, and W7's flat contender),
``bench.fanout`` (one step, then a parallel group of four: W2), and for W7
``bench.nested`` (``noop1``, then the child saga ``bench.child`` of ``noop2``,
``noop3``, ``noop4``, then ``noop5``: the same five no-op task bodies as
``bench.five``, the middle three run by a child execution). For W4's longer sagas,
``bench.steps<L>`` has L no-op steps (``noop1``-``noop<L>``) for each L of
``BENCH_LENGTHS`` (comma-separated; by default 50 and 200). W9's web view shows one
execution of ``bench.steps50`` and one of ``bench.compensated`` (``noop1`` and ``noop2``,
each with a no-op compensation, then ``fail``, which raises: the saga ends COMPENSATED).
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import redis
from bench_tasks import fail, fan, noop
from celery import Celery
from celery.signals import after_task_publish, task_postrun, worker_ready

from celery_saga import Saga, UncompensatedStepWarning

# The benchmark's no-op steps have nothing to undo, on purpose: no warning per step.
warnings.filterwarnings("ignore", category=UncompensatedStepWarning)

ROLE = os.environ.get("BENCH_ROLE", "saga")
STATS_URL = os.environ.get("BENCH_STATS_URL", "redis://127.0.0.1:6379/5")
STATS_KEY = os.environ.get("BENCH_STATS_KEY", "bench:stats")
COUNTING = os.environ.get("BENCH_COUNT") == "1"

QUEUE = os.environ.get("BENCH_QUEUE", "bench")
#: The lengths of W4's longer sagas (``bench.steps<L>``); 5 is ``bench.five``.
LENGTHS = tuple(int(n) for n in os.environ.get("BENCH_LENGTHS", "50,200").split(",") if n)


@dataclass(frozen=True)
class BenchApp:
    """One contender's app with its tasks and the benchmark sagas."""

    app: Celery
    five: Saga
    noops: list[Any]
    fanout: Saga
    fans: list[Any]
    #: W7: ``noop1``, the child saga `child` (``noop2``-``noop4``), ``noop5``.
    nested: Saga
    child: Saga
    #: W4: L -> ``bench.steps<L>``, L no-op steps, for each L of `LENGTHS`.
    long: dict[int, Saga]
    #: W9: ``noop1`` and ``noop2`` (each with a no-op compensation), then ``fail``.
    compensated: Saga


def build(role: str, queue: str, store: str | None = None, broker: str | None = None) -> BenchApp:
    """An app for `role` with the no-op and fan-out tasks and the benchmark sagas.

    `store` (the saga role's state store) and `broker` default to ``BENCH_STORE``
    and ``BENCH_BROKER``.
    """
    app = Celery(
        f"bench-{role}",
        broker=broker or os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/3"),
        set_as_current=False,
    )
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if role == "chain":
        app.conf.result_backend = os.environ.get("BENCH_RESULTS", "redis://127.0.0.1:6379/4")
    else:
        app.conf.saga_backend = store or os.environ.get(
            "BENCH_STORE", "redis://127.0.0.1:6379/5?prefix=bench:"
        )

    def noop_task(n: int) -> Any:
        @app.task(name=f"bench.noop{n}", shared=False)
        def noop_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return noop(*args, **kwargs)

        return noop_step

    def fan_task(n: int) -> Any:
        @app.task(name=f"bench.fan{n}", shared=False)
        def fan_step(**kwargs: Any) -> dict[str, Any]:
            return fan(n, kwargs)

        return fan_step

    every_noop = [noop_task(n) for n in range(1, max((5, *LENGTHS)) + 1)]
    noops = every_noop[:5]
    five = Saga("bench.five", app=app)
    for task in noops:
        five.add_step(task)
    long = {}
    for length in LENGTHS:
        long[length] = Saga(f"bench.steps{length}", app=app)
        for task in every_noop[:length]:
            long[length].add_step(task)
    fans = [fan_task(n) for n in range(1, 6)]
    fanout = Saga("bench.fanout", app=app).add_step(fans[0]).add_parallel(*fans[1:])
    child = Saga("bench.child", app=app)
    for task in noops[1:4]:
        child.add_step(task)
    nested = Saga("bench.nested", app=app).add_step(noops[0]).add_saga(child).add_step(noops[4])

    def undo_task(n: int) -> Any:
        @app.task(name=f"bench.undo{n}", shared=False)
        def undo_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return noop(*args, **kwargs)

        return undo_step

    @app.task(name="bench.fail", shared=False)
    def fail_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return fail(*args, **kwargs)

    compensated = Saga("bench.compensated", app=app)
    for n in (1, 2):
        compensated.add_step(noops[n - 1], compensate=undo_task(n))
    compensated.add_step(fail_step)
    return BenchApp(app, five, noops, fanout, fans, nested, child, long, compensated)


def make(role: str, queue: str, store: str | None = None) -> tuple[Celery, Saga, list[Any]]:
    """An app for `role` with the five no-op tasks and the saga of those five steps."""
    bench = build(role, queue, store)
    return bench.app, bench.five, bench.noops


#: ``CELERY_SAGA_BENCH_OTEL=1``: celery-saga's OpenTelemetry instrumentation is on in every
#: saga-role process that imports this module (the producer and the workers), its spans
#: going through a BatchSpanProcessor to an exporter that drops them: what is measured is
#: the instrumentation's own cost. Needs opentelemetry-sdk and celery-saga-opentelemetry.
#: The harness, the producer of every contender, turns it on and off around the runs of
#: W10's "tracing on" contender instead (`instrument_tracing`, `uninstrument_tracing`).
OTEL = os.environ.get("CELERY_SAGA_BENCH_OTEL") == "1"

#: The instrumentor and its tracer provider, made once per process.
_TRACING: list[Any] = []


def _instrumentation() -> tuple[Any, Any]:
    """The instrumentor and a provider whose spans go to an exporter that drops them."""
    if not _TRACING:
        from collections.abc import Sequence

        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from celery_saga_opentelemetry import CelerySagaInstrumentor

        class Dropped(SpanExporter):
            """Takes every batch and keeps nothing."""

            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        _TRACING[:] = [CelerySagaInstrumentor(), provider]
    return _TRACING[0], _TRACING[1]


def instrument_tracing() -> None:
    """Turn the saga instrumentation on, exporting to nowhere (see `OTEL`)."""
    instrumentor, provider = _instrumentation()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    if not instrumentor.is_instrumented_by_opentelemetry:  # it logged why (versions)
        raise RuntimeError("celery-saga's OpenTelemetry instrumentation did not turn on")


def uninstrument_tracing() -> None:
    """Turn the saga instrumentation off again (spans already ended are still exported)."""
    if _TRACING and _TRACING[0].is_instrumented_by_opentelemetry:
        _TRACING[0].uninstrument()


if OTEL and ROLE == "saga":
    instrument_tracing()

BENCH = build(ROLE, QUEUE)
app, SAGA5, NOOPS = BENCH.app, BENCH.five, BENCH.noops


def store_stats() -> dict[str, int]:
    """Round trips and bytes of this process's state store, if it has one."""
    if ROLE != "saga":
        return {"round_trips": 0, "bytes_written": 0}
    from celery_saga.config import backend_for

    return backend_for(app).stats.snapshot()  # the worker's app


_stats = redis.Redis.from_url(STATS_URL) if COUNTING else None
_reported = {"round_trips": 0, "bytes_written": 0}


@after_task_publish.connect
def _count_publish(**_: Any) -> None:
    if _stats is not None:
        _stats.hincrby(STATS_KEY, "published", 1)


@task_postrun.connect
def _report_store(**_: Any) -> None:
    if _stats is None:
        return
    now = store_stats()
    pipe = _stats.pipeline()
    for key, value in now.items():
        pipe.hincrby(STATS_KEY, key, value - _reported[key])
        _reported[key] = value
    pipe.hincrby(STATS_KEY, "executed", 1)
    pipe.execute()


@worker_ready.connect
def _ready(**_: Any) -> None:
    key = os.environ.get("BENCH_READY_KEY")
    if key:
        redis.Redis.from_url(STATS_URL).set(key, socket.gethostname(), ex=3600)
