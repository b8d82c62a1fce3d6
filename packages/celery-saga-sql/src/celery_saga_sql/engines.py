"""The two SQLAlchemy engines a store uses, set up per database.

- The *write* engine runs multi-statement transactions (`update_step`, `create`,
  `delete`, `purge`, schema upgrades). READ COMMITTED on PostgreSQL and MySQL, so
  every statement after a row lock sees what the previous lock holder committed.
  On SQLite each transaction starts with ``BEGIN IMMEDIATE``: the database write
  lock is taken before anything is read, so a check-then-write cannot be
  overtaken by another connection or process (a deferred transaction would
  fail with "database is locked" when it tried to upgrade).
- The *read* engine runs in autocommit mode: reads and single-statement writes
  (`get`, `list`, `update_saga`) are one statement, so one round trip, with no
  BEGIN/COMMIT around them. A separate engine (pool) keeps the two modes apart:
  switching one connection between them costs extra round trips on MySQL.

On MySQL and MariaDB with PyMySQL, the write engine's connections accept several
statements per exchange (``CLIENT.MULTI_STATEMENTS``): a step write sends its writes
and the COMMIT together (`celery_saga_sql.direct.Batch`). The statements are the
store's own, their values interpolated and escaped by the driver.

SQLite files are opened in WAL mode with a busy timeout, so threads of one
process and several processes can share a file: readers never block the writer,
and writers queue for the lock instead of failing.
"""

from __future__ import annotations

import inspect
import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.engine.default import DefaultDialect

from celery_saga_sql.urls import StoreURL

#: Seconds a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT = 30.0
#: The "in transaction" bit of the MySQL protocol's server status flags.
_SERVER_STATUS_IN_TRANS = 0x0001
#: MySQL protocol client flags: rowcount counts matched rows (SQLAlchemy relies on it),
#: several statements per exchange.
_CLIENT_FOUND_ROWS = 1 << 1
_CLIENT_MULTI_STATEMENTS = 1 << 16
_SKIP_ROLLBACK = "skip_autocommit_rollback" in inspect.signature(DefaultDialect.__init__).parameters


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Put the file in WAL mode (a persistent setting) unless it already is.

    Switching takes an exclusive lock, and SQLite can refuse it at once with
    "database is locked" while other connections open the same new file, without
    waiting on the busy timeout: so retry until the timeout has passed.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    delay = 0.005
    while True:
        cursor = dbapi_connection.cursor()
        try:
            if _sqlite_journal_mode(cursor, "PRAGMA journal_mode") == "wal":
                return
            # An in-memory database answers "memory": nothing to switch there.
            _sqlite_journal_mode(cursor, "PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        finally:
            cursor.close()
        time.sleep(delay)  # another connection holds the lock: back off and retry
        delay = min(delay * 2, 0.2)


def _sqlite_journal_mode(cursor: Any, statement: str) -> str:
    cursor.execute(statement)
    row = cursor.fetchone()
    return str(row[0]).lower() if row else ""


def _sqlite_writer_connect(dbapi_connection: Any, record: Any) -> None:
    # sqlite3 must not open transactions itself: the store sends BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    _sqlite_connect(dbapi_connection, record)


def _sqlite_begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _mysql_reset(dbapi_connection: Any, _record: Any, _state: Any) -> None:
    """Roll back a returned connection only if it is inside a transaction.

    SQLAlchemy's default reset sends ROLLBACK for every connection returned to
    the pool, and PyMySQL always sends it: one wasted round trip after each
    committed write. The server reports in every reply whether a transaction is
    open, so the check costs nothing.
    """
    if dbapi_connection.server_status & _SERVER_STATUS_IN_TRANS:
        dbapi_connection.rollback()


def make_engines(store_url: StoreURL, **engine_options: Any) -> tuple[Engine, Engine]:
    """Build the (write, read) engines for a store URL.

    `engine_options` go to both `sqlalchemy.create_engine` calls (pool sizes,
    ``connect_args``, ``echo``...).
    """
    url = store_url.url
    backend = store_url.backend
    options = dict(engine_options)
    if backend == "sqlite":
        connect_args = dict(options.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        connect_args.setdefault("check_same_thread", False)
        options["connect_args"] = connect_args
    if backend in ("mysql", "mariadb"):
        # MySQL closes idle connections after wait_timeout (8 hours by default).
        options.setdefault("pool_recycle", 3600)

    write_options = dict(options)
    mysql_reset = backend in ("mysql", "mariadb") and store_url.url.get_driver_name() == "pymysql"
    if backend in ("mysql", "mariadb"):
        write_options.setdefault("isolation_level", "READ COMMITTED")
        if mysql_reset:
            write_options.setdefault("pool_reset_on_return", None)
            connect_args = dict(write_options.get("connect_args", {}))
            flags = int(connect_args.get("client_flag", 0))
            connect_args["client_flag"] = flags | _CLIENT_FOUND_ROWS | _CLIENT_MULTI_STATEMENTS
            write_options["connect_args"] = connect_args
    writer = create_engine(url, **write_options)
    if mysql_reset and write_options["pool_reset_on_return"] is None:
        event.listen(writer, "reset", _mysql_reset)

    read_options = dict(options)
    read_options["isolation_level"] = "AUTOCOMMIT"
    if _SKIP_ROLLBACK:
        read_options.setdefault("skip_autocommit_rollback", True)
    reader = create_engine(url, **read_options)

    if backend == "sqlite":
        event.listen(writer, "connect", _sqlite_writer_connect)
        event.listen(writer, "begin", _sqlite_begin_immediate)
        event.listen(reader, "connect", _sqlite_connect)
    return writer, reader
