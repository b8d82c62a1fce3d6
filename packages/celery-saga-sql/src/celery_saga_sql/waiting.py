"""Waiting for a terminal status on PostgreSQL: LISTEN, shared by every waiter.

A status change into a terminal status sends ``pg_notify(<prefix>finished, <saga
id>)`` from the statement that makes it (`celery_saga_sql.dialects.postgresql`), so
the notification is committed with the change or not at all. `wait_listening` joins
the store object's listener (`celery_saga_sql.listener`: one LISTEN connection for
all its waits), reads the execution, then sleeps until a notification names it: no
polling. The asyncio counterpart is `celery_saga_sql.aio`.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Engine

from celery_saga.backends.base import StoreStats
from celery_saga.backends.listening import wait_woken
from celery_saga.models import SagaExecution

#: A `SQLSagaBackend` (not imported here: its backend module imports this one).
Store = Any


def psycopg_notifies_with_timeout() -> bool:
    """psycopg 3.2 added ``Connection.notifies(timeout=...)``; 3.1 falls back to polling."""
    try:
        import inspect

        import psycopg
    except ImportError:
        return False
    return "timeout" in inspect.signature(psycopg.Connection.notifies).parameters


def listen_args(
    engine: Engine, connect_args: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Arguments of ``psycopg.connect`` (or ``AsyncConnection.connect``) for a listener:
    the engine's own connection arguments, without SQLAlchemy's adapters."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams.pop("context", None)  # SQLAlchemy's adapters are not needed here
    cparams.update(connect_args)
    return tuple(cargs), dict(cparams)


def listening_connection(store: Store, stats: StoreStats) -> Any:
    """A new autocommit psycopg connection that LISTENs on the store's channel."""
    import psycopg
    from psycopg import sql

    cargs, cparams = store.listen_args()
    conn = psycopg.connect(*cargs, **cparams, autocommit=True)
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.tables.channel)))
    except BaseException:
        conn.close()
        raise
    stats.add(1)
    return conn


def wait_listening(store: Store, saga_id: str, timeout: float | None) -> SagaExecution | None:
    """`SQLSagaBackend.wait` on PostgreSQL: the terminal execution, or None on timeout.

    Waits on the store object's shared LISTEN connection (`NotifyListener`). The
    execution is read again every `notify_recheck` seconds anyway: a safety net for a
    notification sent by a writer that does not send them.
    """
    read, status = (
        functools.partial(store.get, saga_id),
        functools.partial(store.get_status, saga_id),
    )
    return wait_woken(read, store.listener(), saga_id, timeout, store.notify_recheck, status)
