"""Running statements: write transactions and autocommit statements, retried and counted.

A transaction that lost a deadlock or a lock wait was rolled back by the database
and is safe to run again, so it is (with a short random backoff). Every exchange
with the server is counted in the store's `StoreStats`: BEGIN where the driver sends
it as an exchange of its own, each statement, and the COMMIT or ROLLBACK.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, CursorResult, Engine, Executable
from sqlalchemy.exc import DBAPIError

from celery_saga.backends.base import StoreStats
from celery_saga_sql.direct import Batch

T = TypeVar("T")

#: PostgreSQL SQLSTATEs and MySQL error numbers of a transaction that lost a
#: deadlock or a lock wait and was rolled back: the write is safe to run again.
_RETRY_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
_RETRY_MYSQL_ERRNOS = frozenset({1205, 1213})


def transient(exc: DBAPIError) -> bool:
    """True if the database rolled the statement back because of lock contention."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in _RETRY_MYSQL_ERRNOS:
        return True
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0.002, 0.02) * attempt)


class Tx:
    """One write transaction: its connection, and the round trips and bytes it cost."""

    __slots__ = ("conn", "rollback_only", "trips", "written")

    def __init__(self, conn: Connection, begin_trips: int) -> None:
        self.conn = conn
        self.trips = begin_trips
        self.written = 0
        #: End with ROLLBACK instead of COMMIT (the work wrote something it takes back).
        self.rollback_only = False

    def execute(
        self,
        statement: Executable,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        written: int = 0,
    ) -> CursorResult[Any]:
        """Run one statement (one round trip) inside the transaction."""
        self.trips += 1
        self.written += written
        return self.conn.execute(statement, params)


class Runner:
    """Runs a store's statements on its two engines, retrying lock losses, counting trips.

    `begin_trips`: the exchanges BEGIN costs (psycopg and our SQLite setup send it on
    its own; PyMySQL starts the transaction with the first statement). `attempts`
    says how many times a transaction that lost a deadlock or lock wait is run.
    """

    def __init__(
        self,
        engine: Engine,
        read_engine: Engine,
        stats: StoreStats,
        *,
        begin_trips: int,
        attempts: Callable[[], int],
    ) -> None:
        self.engine = engine
        self.read_engine = read_engine
        self.stats = stats
        self.begin_trips = begin_trips
        self._attempts = attempts

    def write(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in a write transaction; run it again if it lost a deadlock."""
        attempt = 0
        while True:
            attempt += 1
            with self.engine.connect() as conn:
                tx = Tx(conn, self.begin_trips)
                try:
                    trans = conn.begin()
                    result = work(tx)
                    # Commit even when `work` only read (a refused compare-and-set):
                    # it releases the locks like a rollback, and psycopg follows a
                    # ROLLBACK with DEALLOCATE ALL, one more round trip.
                    if tx.rollback_only:
                        trans.rollback()
                    else:
                        trans.commit()
                    tx.trips += 1
                    return result
                except DBAPIError as exc:
                    tx.trips += 1  # the rollback
                    if attempt >= self._attempts() or not transient(exc):
                        raise
                except BaseException:
                    tx.trips += 1
                    raise
                finally:
                    self.stats.add(tx.trips, tx.written)
            _backoff(attempt)

    def batched(self, work: Callable[[Batch], T]) -> T:
        """Run `work` on a driver connection of the write engine that sends several
        statements in one exchange (`Batch`); `work` ends the transaction itself. Run
        again if it lost a deadlock, like `write`."""
        attempt = 0
        while True:
            attempt += 1
            batch = Batch(self.engine)
            try:
                return work(batch)
            except DBAPIError as exc:
                if attempt >= self._attempts() or not transient(exc):
                    raise
            finally:
                batch.close()
                self.stats.add(batch.trips, batch.written)
            _backoff(attempt)

    def autocommit(
        self, work: Callable[[Connection], T], *, written: int = 0, idempotent: bool = True
    ) -> T:
        """Run `work` (one statement) outside any explicit transaction: one round trip."""
        attempt = 0
        while True:
            attempt += 1
            self.stats.add(1, written)
            try:
                with self.read_engine.connect() as conn:
                    return work(conn)
            except DBAPIError as exc:
                retry = transient(exc) or (idempotent and exc.connection_invalidated)
                if attempt >= self._attempts() or not retry:
                    raise
            _backoff(attempt)
