"""The Celery app of the celery-saga 0.1.1 contender (run with the interpreter of its venv).

celery-saga 0.1.1 has the same import name as this project, so this module is only
ever imported by the interpreter of the venv ``nox -s bench`` makes for it: by its
worker (``celery -A orig_app worker``) and by `orig_driver`, its caller.

Set up as 0.1.1's README and code want it: its internal tasks are ``shared_task``s
that dispatch through ``current_app``, so this app is made current and default; its
state store is ``RedisSagaBackend(url=...)``, installed with ``set_default_backend``
here, so worker and caller both use it; its parallel groups are Celery chords, so
the app has a Redis result backend. The step bodies are those of `bench_tasks`.

Environment: ``BENCH_BROKER``, ``BENCH_QUEUE``, ``BENCH_ORIG_RESULTS`` (result
backend URL), ``BENCH_ORIG_STORE`` (its state store URL), ``BENCH_READY_KEY``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
from bench_tasks import fan, noop
from celery import Celery
from celery.signals import worker_ready

from celery_saga import Saga, set_default_backend  # celery-saga 0.1.1, not this project
from celery_saga.backends import RedisSagaBackend

QUEUE = os.environ.get("BENCH_QUEUE", "bench-orig")
#: Its records are the keys ``celery_saga:<saga id>``, JSON documents.
STORE_URL = os.environ.get("BENCH_ORIG_STORE", "redis://127.0.0.1:6379/7")
READY_URL = os.environ.get("BENCH_STATS_URL", "redis://127.0.0.1:6379/5")

app = Celery(
    "bench-orig",
    broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/3"),
    backend=os.environ.get("BENCH_ORIG_RESULTS", "redis://127.0.0.1:6379/6"),
)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
app.set_current()
app.set_default()
set_default_backend(RedisSagaBackend(url=STORE_URL))


def _noop_task(n: int) -> Any:
    @app.task(name=f"bench.noop{n}")
    def noop_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return noop(*args, **kwargs)

    return noop_step


def _fan_task(n: int) -> Any:
    @app.task(name=f"bench.fan{n}")
    def fan_step(**kwargs: Any) -> dict[str, Any]:
        return fan(n, kwargs)

    return fan_step


NOOPS = [_noop_task(n) for n in range(1, 6)]
FANS = [_fan_task(n) for n in range(1, 6)]

#: Five no-op steps (W1, W3).
FIVE = Saga("bench.five")
for _task in NOOPS:
    FIVE.add_step(_task)
#: One step, then a parallel group of four (W2).
FANOUT = Saga("bench.fanout").add_step(FANS[0]).add_parallel(*FANS[1:])


@worker_ready.connect
def _ready(**_: Any) -> None:
    key = os.environ.get("BENCH_READY_KEY")
    if key:
        redis.Redis.from_url(READY_URL).set(key, socket.gethostname(), ex=3600)
