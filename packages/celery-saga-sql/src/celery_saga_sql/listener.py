"""One LISTEN connection for every `wait` on a PostgreSQL store object: `NotifyListener`.

A change into a finished status sends ``pg_notify(<channel>, <saga id>)`` from the
statement that makes it (`celery_saga_sql.dialects.postgresql`). The listener's
connection LISTENs on the store's channel once, when it opens; the dispatcher thread,
its only reader, wakes the waiters of the saga id each notification names. Topics are
saga ids, so joining one costs no round trip once the connection is open: a thousand
threads waiting in ``SagaResult.get()`` share one connection, where each used to open
one (a server process each). `celery_saga.backends.listening.SharedListener` does the
sharing, idleness, lost connections and forks.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from celery_saga.backends.listening import IDLE, SharedListener

__all__ = ["IDLE", "NotifyListener"]


class NotifyListener(SharedListener):
    """Notifications on one PostgreSQL channel, for every `wait` of one store object.

    `connect` opens an autocommit psycopg connection that LISTENs on the channel.
    """

    thread_name: ClassVar[str] = "celery-saga-sql-waits"

    def __init__(self, connect: Callable[[], Any], idle: float = IDLE) -> None:
        self._connect = connect
        super().__init__(idle)

    def open(self) -> Any:
        return self._connect()

    def read(self, conn: Any, timeout: float) -> Iterator[str]:
        for notice in conn.notifies(timeout=timeout):
            yield notice.payload

    def interrupt(self, conn: Any) -> None:
        """End a read on the connection's socket now, keeping its descriptor (no close):
        shutting down a duplicate of the descriptor shuts down the socket they share."""
        try:
            duplicate = socket.socket(fileno=os.dup(conn.fileno()))
        except (OSError, ValueError):
            return  # no socket (closed already): the dispatcher's read ends within a second
        with duplicate, contextlib.suppress(OSError):
            duplicate.shutdown(socket.SHUT_RDWR)
