"""Waiting on the PostgreSQL store: one LISTEN connection for every wait of a store object.

`SQLSagaBackend.wait` (what `SagaResult.get()` calls) joins the store object's listener
instead of opening a connection of its own: counted here on the server in
``pg_stat_activity``, the connections carrying an application name of the test's own.
The listener survives a lost connection, closes when idle, and a forked child opens
its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from support import wait_until
from waiting_checks import (
    check_a_forked_child_waits_on_a_connection_of_its_own,
    check_a_wait_reads_the_status_alone_until_the_end_is_announced,
    check_an_idle_connection_closes_and_the_next_wait_opens_one,
    finish,
)

from celery_saga.models import SagaStatus
from celery_saga.testing import make_execution
from celery_saga_sql import SQLSagaBackend

WAITERS = 50


def _server_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return "postgresql://" + url.split("://", 1)[1]


@pytest.fixture
def named(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> tuple[SQLSagaBackend, str]:
    """A store whose connections carry an application name of this test's own, and the name."""
    name = f"waits-{uuid.uuid4().hex[:10]}"
    store = make_store(f"{postgres_url}?application_name={name}")
    store.notify_recheck = 60.0  # type: ignore[misc]  # a re-read would take a minute
    return store, name


def listening(store: SQLSagaBackend, name: str) -> list[int]:
    """The server processes of the connections named `name` whose last query was LISTEN."""
    with psycopg.connect(
        _server_url(store.engine.url.render_as_string(False).split("?")[0])
    ) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = %s AND query LIKE 'LISTEN%%'",
            (name,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def test_fifty_waits_from_threads_share_one_connection_and_all_return(
    named: tuple[SQLSagaBackend, str],
) -> None:
    store, name = named
    executions = [make_execution() for _ in range(WAITERS)]
    for execution in executions:
        store.create(execution)
    store.stats.reset()
    with ThreadPoolExecutor(max_workers=WAITERS) as pool:
        waits = [pool.submit(store.wait, e.saga_id, 60) for e in executions]
        # Every waiter has read its status once (after joining): one LISTEN in all.
        wait_until(lambda: store.stats.round_trips >= WAITERS + 1, 30, "every wait to read")
        assert store.stats.round_trips == WAITERS + 1
        assert len(listening(store, name)) == 1
        assert not any(w.done() for w in waits)
        finish(store, executions)
        got = [w.result(timeout=30) for w in waits]
    assert [g.saga_id if g else None for g in got] == [e.saga_id for e in executions]
    assert all(g is not None and g.status is SagaStatus.COMPLETED for g in got)
    assert len(listening(store, name)) == 1
    # A later wait joins the open connection: no LISTEN; its status, then the execution.
    store.stats.reset()
    assert store.wait(executions[0].saga_id, 0.5) is not None
    assert store.stats.round_trips == 2


def test_a_wait_outlives_a_lost_connection(named: tuple[SQLSagaBackend, str]) -> None:
    store, name = named
    execution = make_execution()
    store.create(execution)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(store.wait, execution.saga_id, 60)
        wait_until(lambda: len(listening(store, name)) == 1, 30, "the wait to LISTEN")
        killed = listening(store, name)[0]
        with psycopg.connect(
            _server_url(store.engine.url.render_as_string(False).split("?")[0])
        ) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (killed,))
        # The waiter reads again and LISTENs on a new connection; the notification wakes it.
        wait_until(
            lambda: listening(store, name) not in ([], [killed]), 30, "a new LISTEN connection"
        )
        started = time.monotonic()
        finish(store, [execution])
        got = waiting.result(timeout=30)
    assert got is not None and got.status is SagaStatus.COMPLETED
    assert time.monotonic() - started < 10  # woken by the notification, not the 60 s re-read


def test_closing_the_store_ends_its_listener(named: tuple[SQLSagaBackend, str]) -> None:
    store, name = named
    done = make_execution(status=SagaStatus.COMPLETED)
    store.create(done)
    assert store.wait(done.saga_id, 5) is not None
    assert len(listening(store, name)) == 1
    threads = {t.name for t in threading.enumerate()}
    assert "celery-saga-sql-waits" in threads
    store.close()
    assert "celery-saga-sql-waits" not in {t.name for t in threading.enumerate()}
    wait_until(lambda: not listening(store, name), 30, "the server to see the connection go")


def test_an_idle_connection_closes_and_the_next_wait_opens_one(
    named: tuple[SQLSagaBackend, str],
) -> None:
    store, name = named
    check_an_idle_connection_closes_and_the_next_wait_opens_one(
        store, store.listener(), lambda: len(listening(store, name))
    )


def test_a_wait_that_times_out_returns_none_and_leaves(named: tuple[SQLSagaBackend, str]) -> None:
    store, _ = named
    execution = make_execution()
    store.create(execution)
    started = time.monotonic()
    assert store.wait(execution.saga_id, 0.3) is None
    assert 0.3 <= time.monotonic() - started < 10
    assert store.listener().topics == {}


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_waits_on_a_connection_of_its_own(named: tuple[SQLSagaBackend, str]) -> None:
    store, name = named
    check_a_forked_child_waits_on_a_connection_of_its_own(
        store, lambda: len(listening(store, name))
    )


def test_a_wait_reads_the_status_alone_until_the_end_is_announced(
    named: tuple[SQLSagaBackend, str],
) -> None:
    check_a_wait_reads_the_status_alone_until_the_end_is_announced(named[0])
