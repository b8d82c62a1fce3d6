"""Waiting from asyncio on PostgreSQL: psycopg's async LISTEN, one connection per loop.

A status change into a terminal status sends ``pg_notify(<prefix>finished, <saga
id>)`` from the same statement (see `SQLSagaBackend.update_saga`); the synchronous
`SQLSagaBackend.wait` LISTENs on one connection per store object for all its waits
(`celery_saga_sql.listener`). From
asyncio, `PostgresNotifications` LISTENs once per event loop and table prefix on a
psycopg `AsyncConnection` (psycopg 3.2 or later, the driver the store already uses:
no extra to install) and wakes the waiters of each notified saga id. psycopg is
imported when the first waiter starts a listener.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from celery_saga.backends.waiting import Notifications, notifications_for, wait_notified
from celery_saga.models import SagaExecution

#: A `SQLSagaBackend` (not imported here: its backend module imports this one).
Store = Any

__all__ = ["PostgresNotifications", "wait_async"]


class PostgresNotifications(Notifications):
    """Notifications on one PostgreSQL channel, for every waiter of one event loop.

    One LISTEN covers every execution of the store: a notification's payload is the
    saga id, which is the topic waiters join, so joining costs no round trip.
    """

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], channel: str) -> None:
        super().__init__()
        self._args = args
        self._kwargs = kwargs
        self._channel = channel
        self._conn: Any = None

    def __repr__(self) -> str:
        host = self._kwargs.get("host", "?")
        return f"<PostgresNotifications {host}/{self._kwargs.get('dbname', '?')} {self._channel}>"

    async def connect(self) -> None:
        import psycopg
        from psycopg import sql

        self._conn = await psycopg.AsyncConnection.connect(
            *self._args, **self._kwargs, autocommit=True
        )
        await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))

    async def receive(self, timeout: float) -> AsyncIterator[str]:
        async for notice in self._conn.notifies(timeout=timeout):
            yield notice.payload

    async def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


#: Per store object: how to find (or make) the running loop's listener for its channel.
_listeners: weakref.WeakKeyDictionary[Store, Callable[[], Notifications]] = (
    weakref.WeakKeyDictionary()
)


def _listener(store: Store) -> Callable[[], Notifications]:
    """The running loop's listener for the store's database and channel."""
    found = _listeners.get(store)
    if found is None:
        args, kwargs = store.listen_args()
        channel = store.tables.channel
        key = ("postgresql", repr(args), repr(sorted(kwargs.items(), key=str)), channel)
        found = _listeners[store] = lambda: notifications_for(
            key, lambda: PostgresNotifications(args, kwargs, channel)
        )
    return found


async def wait_async(
    store: Store, saga_id: str, timeout: float | None = None
) -> SagaExecution | None:
    """`SQLSagaBackend.async_wait` on PostgreSQL: woken by NOTIFY, re-read now and then.

    The re-read interval is the store's `notify_recheck` (a safety net for a
    notification lost with a dropped connection).
    """
    return await wait_notified(
        store, saga_id, timeout, _listener(store), saga_id, recheck=store.notify_recheck
    )
