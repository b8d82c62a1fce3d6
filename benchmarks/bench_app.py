"""The Celery app the benchmark workers run: the same tasks for every contender.

Configured from the environment by `run.py`: ``BENCH_ROLE`` is ``saga`` (state store
``BENCH_STORE``, no result backend: the saga needs none) or ``chain`` (plain Celery
chains of the same tasks, with a Redis result backend to learn when they finished);
``BENCH_BROKER`` is the broker. ``BENCH_COUNT=1`` makes every process report broker
publishes and state-store round trips to Redis.

Four sagas are defined on each app, with the task bodies of `bench_tasks`:
``bench.five`` (five no-op steps: W1, W3, W4, W5, and W7's flat contender),
``bench.fanout`` (one step, then a parallel group of four: W2), and for W7
``bench.nested`` (``noop1``, then the child saga ``bench.child`` of ``noop2``,
``noop3``, ``noop4``, then ``noop5``: the same five no-op task bodies as
``bench.five``, the middle three run by a child execution).
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import redis
from bench_tasks import fan, noop
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

    noops = [noop_task(n) for n in range(1, 6)]
    five = Saga("bench.five", app=app)
    for task in noops:
        five.add_step(task)
    fans = [fan_task(n) for n in range(1, 6)]
    fanout = Saga("bench.fanout", app=app).add_step(fans[0]).add_parallel(*fans[1:])
    child = Saga("bench.child", app=app)
    for task in noops[1:4]:
        child.add_step(task)
    nested = Saga("bench.nested", app=app).add_step(noops[0]).add_saga(child).add_step(noops[4])
    return BenchApp(app, five, noops, fanout, fans, nested, child)


def make(role: str, queue: str, store: str | None = None) -> tuple[Celery, Saga, list[Any]]:
    """An app for `role` with the five no-op tasks and the saga of those five steps."""
    bench = build(role, queue, store)
    return bench.app, bench.five, bench.noops


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
