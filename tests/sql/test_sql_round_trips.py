"""Round trips per step of sagas run by a real worker, per database, from `store.stats`.

The common path: task steps that each get the whole context, run by an in-process
worker (threads) on a Redis broker. Each step's worker records the outcome, marks the
next step started and sends it; the store must do that in a fixed number of round
trips, the same for a 5-step and a 50-step saga (no whole-execution read per step).
The waiting happens on another store object, so the worker's store counts only
`create`, the step writes and the completion.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu import Connection
from kombu.asynchronous import set_event_loop
from sqlalchemy import event
from support import BROKER_DB, REDIS_URL, require

from celery_saga import Saga
from celery_saga.models import SagaStatus
from celery_saga_sql import SQLSagaBackend

LENGTHS = (5, 50)
#: Per database: (round trips per step, round trips per saga besides: its creation; its
#: completion is written with its last step). PostgreSQL: one statement per step (the
#: last one ends the saga too); create is one statement. MariaDB: SELECT ... FOR UPDATE,
#: then one multi-table UPDATE (and, for the last step, the execution's UPDATE) and COMMIT
#: in one exchange per step; create is two INSERTs and COMMIT in one exchange. SQLite
#: counts statements: BEGIN IMMEDIATE, the touch that reads, step rows, COMMIT per step,
#: and the execution's UPDATE with the last; create is BEGIN, two INSERTs, COMMIT. Each
#: step is a stage of its own, so no step writes a counter row (`StepRequest.alone`).
EXPECTED = {"postgresql": (1, 1), "mariadb": (2, 1), "sqlite": (4, 5)}


def _app(store: SQLSagaBackend, queue: str, unique: str) -> tuple[Celery, dict[int, Saga]]:
    """An app on the test broker with one saga of no-op steps for each of `LENGTHS`."""
    app = Celery(f"rt-{unique}", broker=f"{REDIS_URL}/{BROKER_DB}", set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        saga_backend=store,
        saga_lease_seconds=600,  # no heartbeat beats while the sagas run
        broker_connection_retry_on_startup=True,
    )

    def noop_task(n: int) -> Any:
        @app.task(name=f"rt.{unique}.noop{n}", shared=False)
        def noop(**kwargs: Any) -> dict[str, Any]:
            return {f"n{n}": n}

        return noop

    tasks = [noop_task(n) for n in range(max(LENGTHS))]
    sagas = {}
    for length in LENGTHS:
        sagas[length] = Saga(f"rt-{unique}-{length}", app=app)
        for task in tasks[:length]:
            sagas[length].add_step(task, no_compensation=True)
    return app, sagas


@contextmanager
def _worker(app: Celery, queue: str) -> Iterator[None]:
    """A worker (threads) in this process; its queue is deleted afterwards."""
    require(REDIS_URL, 6379, "Redis")
    set_event_loop(None)
    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, queues=[queue]
        ):
            yield
    finally:
        set_event_loop(None)
        with Connection(app.conf.broker_url) as conn:
            conn.default_channel.queue_delete(queue)


def _run(saga: Saga, store: SQLSagaBackend, waiter: SQLSagaBackend) -> int:
    """Round trips the worker's store made for one run of `saga`, to its completion."""
    store.stats.reset()
    result = saga.run(order=1)
    done = waiter.wait(result.saga_id, timeout=120)
    assert done is not None, "the saga did not finish in time"
    assert done.status is SagaStatus.COMPLETED, done.error
    assert done.output == {"order": 1, **{f"n{n}": n for n in range(len(done.steps))}}
    return store.stats.round_trips


def test_round_trips_per_step_are_fixed_and_flat(
    database_url: str, make_store: Callable[..., SQLSagaBackend], unique: str
) -> None:
    store, waiter = make_store(database_url), make_store(database_url)
    store.upgrade_schema()
    database = "mariadb" if store.url.backend in ("mysql", "mariadb") else store.url.backend
    per_step, per_saga = EXPECTED[database]
    queue = f"rt-{unique}"
    app, sagas = _app(store, queue, unique)
    with _worker(app, queue):
        trips = {n: _run(sagas[n], store, waiter) for n in LENGTHS}
    assert trips == {n: per_step * n + per_saga for n in LENGTHS}
    short, long_ = LENGTHS
    assert (trips[long_] - trips[short]) / (long_ - short) == per_step  # flat with length


def test_postgresql_counted_round_trips_are_what_psycopg_sends(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend], unique: str
) -> None:
    """The count agrees with the wire: each exchange ends with a Sync or is a simple Query."""
    store, waiter = make_store(postgres_url), make_store(postgres_url)
    queue = f"rt-{unique}"
    app, sagas = _app(store, queue, unique)
    with tempfile.TemporaryFile("w+") as trace:

        def traced(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.pgconn.trace(trace.fileno())

        for engine in (store.engine, store.read_engine):
            event.listen(engine, "connect", traced)
        store.upgrade_schema()
        with _worker(app, queue):
            trace.flush()
            trace.seek(0)
            trace.truncate()
            trips = _run(sagas[5], store, waiter)
        trace.flush()
        os.fsync(trace.fileno())
        trace.seek(0)
        sent = [
            line
            for line in trace.read().splitlines()
            if "\tF\t" in line and ("\tSync" in line or "\tQuery\t" in line)
        ]
    assert trips == len(sent) == 5 + 1, sent
