"""`SQLSagaBackend`: the saga state store on PostgreSQL, MySQL/MariaDB or SQLite.

One row per execution, one row per step, one row per counter (see `schema`). This
class checks arguments and hands each operation to the store's dialect object
(`celery_saga_sql.dialects`), which holds the statements, built once, and says how
each write stays atomic on its database:

- A step write is one statement on PostgreSQL (one round trip, no BEGIN/COMMIT): the
  compare-and-set, the counter, the next stage's start. On MySQL/MariaDB and SQLite
  it is one write transaction that locks the execution row, then the step rows it
  needs (SQLite: ``BEGIN IMMEDIATE``), decides in Python (`StepExpect.refusal`), and
  writes.
- Every writer of a saga locks its execution row first, so writers of one saga queue
  there and never deadlock on each other; a lease renewal locks step rows only.
- `update_saga` is one conditional ``UPDATE``; on PostgreSQL a move into a terminal
  status sends ``pg_notify`` from the same statement (`celery_saga_sql.waiting`).
- Reads are one statement each (the execution joined to its steps), in autocommit
  mode, so they see one consistent snapshot in one round trip. No step write reads
  the whole execution: `update_step_and_get` reads it only when its caller asks.

Round trips are counted in `stats` (`celery_saga_sql.transactions`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from celery_saga.backends.base import (
    Lease,
    Page,
    SagaBackend,
    StartNext,
    StepExpect,
    StepWrite,
    check_limit,
    check_saga_changes,
    check_step_changes,
    decode_cursor,
    normalize_status,
    plain_value,
)
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    SagaSummary,
    StepRecord,
    now,
)
from celery_saga_sql import migrations
from celery_saga_sql.codec import saga_values
from celery_saga_sql.dialects import SQLDialect, dialect_for
from celery_saga_sql.engines import make_engines
from celery_saga_sql.housekeeping import delete_finished, purge_finished
from celery_saga_sql.leases import order as lease_order
from celery_saga_sql.listener import NotifyListener
from celery_saga_sql.listing import listing_query
from celery_saga_sql.schema import Tables, build_tables
from celery_saga_sql.stepwrites import StepRequest
from celery_saga_sql.transactions import Runner
from celery_saga_sql.urls import DEFAULT_TABLE_PREFIX, parse_store_url, validate_table_prefix
from celery_saga_sql.waiting import (
    listen_args,
    listening_connection,
    psycopg_notifies_with_timeout,
    wait_listening,
)


def _pick(name: str, explicit: Any, from_url: Any, default: Any) -> Any:
    if explicit is not None and from_url is not None and explicit != from_url:
        raise ValueError(
            f"{name} is given twice with different values ({explicit!r} as an option, "
            f"{from_url!r} in the URL): give it once"
        )
    if explicit is not None:
        return explicit
    return from_url if from_url is not None else default


_live_stores: weakref.WeakSet[SQLSagaBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child (a Celery prefork worker) must not use the parent's sockets.
    for store in list(_live_stores):
        store._forget_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLSagaBackend(SagaBackend):
    """Saga state in SQL tables, through SQLAlchemy 2 Core.

    ``SQLSagaBackend("postgresql://user@host/db")``, or through the registry
    with any of the schemes ``postgresql``, ``postgres``, ``mysql``, ``mariadb``
    and ``sqlite``. `table_prefix` (default ``"saga_"``, or ``?table_prefix=`` in
    the URL) names the tables; with `create_tables` (default True) the tables are
    created or upgraded on first use, otherwise they must already be at this
    package's schema version (``python -m celery_saga_sql upgrade <url>``).
    Other keyword arguments go to `sqlalchemy.create_engine`. Nothing connects
    until the first operation.
    """

    schemes = ("postgresql", "postgres", "mysql", "mariadb", "sqlite")
    #: While waiting on NOTIFY, re-read the execution this often anyway (seconds):
    #: a safety net for a notification sent by a writer that does not send them.
    notify_recheck: ClassVar[float] = 30.0
    #: How many times a write transaction that lost a deadlock or lock wait is run.
    write_attempts: ClassVar[int] = 8
    #: Leases renewed per statement on MySQL/MariaDB and SQLite (PostgreSQL sends any
    #: number in one statement): bounds the statement's size and bound parameters.
    renew_batch: ClassVar[int] = 1000

    def __init__(
        self,
        url: str | URL,
        *,
        table_prefix: str | None = None,
        create_tables: bool | None = None,
        **engine_options: Any,
    ) -> None:
        parsed = parse_store_url(url)
        prefix = _pick("table_prefix", table_prefix, parsed.table_prefix, DEFAULT_TABLE_PREFIX)
        self.tables: Tables = build_tables(validate_table_prefix(prefix))
        self.create_tables: bool = bool(
            _pick("create_tables", create_tables, parsed.create_tables, True)
        )
        self.url = parsed
        self.engine, self.read_engine = make_engines(parsed, **engine_options)
        self._connect_args: dict[str, Any] = dict(engine_options.get("connect_args") or {})
        self.dialect: SQLDialect = dialect_for(parsed.backend, self.tables, self.engine)
        self._run = Runner(
            self.engine,
            self.read_engine,
            self.stats,
            begin_trips=self.dialect.begin_trips,
            attempts=lambda: self.write_attempts,
        )
        self._notifies = (
            parsed.backend == "postgresql"
            and self.engine.dialect.driver == "psycopg"
            and psycopg_notifies_with_timeout()
        )
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self._listener: NotifyListener | None = None
        _live_stores.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLSagaBackend:
        """``postgresql://user:password@host:5432/db?table_prefix=saga_`` and the like."""
        return cls(url, **options)

    @classmethod
    def open_for_reading(cls, url: str, **options: Any) -> SQLSagaBackend:
        """The store at `url` with ``create_tables=False``: it creates no table and no file.

        Its first operation raises `StoreNotFound` when the SQLite file or the tables
        do not exist (`TablesNotFound`, with the command that creates them).
        """
        return cls(url, **{**options, "create_tables": False})

    def __repr__(self) -> str:
        return f"<SQLSagaBackend {self.url.redacted()} prefix={self.tables.prefix!r}>"

    # -- setup -----------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Create, upgrade or check the tables, once per store object."""
        if self._prepared:
            return
        with self._prepare_lock:
            if not self._prepared:  # another thread may have done it meanwhile
                if self.create_tables:
                    migrations.upgrade(self.engine, self.tables.prefix)
                else:
                    self._check_sqlite_file()
                    migrations.check(self.engine, self.tables.prefix)
                self._prepared = True

    def _check_sqlite_file(self) -> None:
        """Without `create_tables`, refuse a SQLite file that does not exist.

        Connecting would create an empty file: a mistyped path must not leave one
        behind. Raises `TablesNotFound` (a `StoreNotFound` and a `SchemaNotUpgraded`).
        """
        database = self.url.url.database if self.url.backend == "sqlite" else None
        if not database or database.startswith("file:") or os.path.exists(database):
            return
        prefix = self.tables.prefix
        raise migrations.TablesNotFound(
            f"the SQLite database {os.path.abspath(database)!r} does not exist: check the "
            "path in the URL. Nothing was created (the store was opened with "
            "create_tables=False, as read-only tools open it); to create the store: python "
            f"-m celery_saga_sql upgrade <url> --table-prefix {prefix}"
        )

    def upgrade_schema(self) -> migrations.UpgradeResult:
        """Create or upgrade the tables now (what ``python -m celery_saga_sql upgrade`` does)."""
        result = migrations.upgrade(self.engine, self.tables.prefix)
        self._prepared = True
        return result

    def _forget_connections(self) -> None:
        self.engine.dispose(close=False)
        self.read_engine.dispose(close=False)

    def close(self) -> None:
        """Close every pooled connection, and the connection waits share."""
        _live_stores.discard(self)
        if self._listener is not None:
            self._listener.close()
        self.engine.dispose()
        self.read_engine.dispose()

    # -- encoding (also used to fill the tables in bulk) -----------------------------------------
    def _execution_row(self, execution: SagaExecution) -> dict[str, Any]:
        return self.dialect.codec.execution_row(execution)

    def _step_row(self, saga_id: str, step: StepRecord) -> dict[str, Any]:
        return self.dialect.codec.step_row(saga_id, step)

    # -- create and read ------------------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        """Insert the execution and its steps at once; the unique index on the
        idempotency key decides between concurrent creators."""
        self._prepare()
        codec = self.dialect.codec
        row = codec.execution_row(execution)
        step_rows = [codec.step_row(execution.saga_id, step) for step in execution.steps]
        key = execution.idempotency_key
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self.dialect.create(self._run, row, step_rows)
                return execution, True
            except IntegrityError:
                if key is not None:
                    existing = self.find_by_idempotency_key(key)
                    if existing is not None:
                        return existing, False
                if self.get(execution.saga_id) is not None:
                    raise ValueError(f"saga id {execution.saga_id} already exists") from None
                if key is None or attempt == attempts:
                    raise
                # The execution that held the key was deleted in between: try again.
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, saga_id: str) -> SagaExecution | None:
        self._prepare()
        read = self.dialect.read_execution
        return self._run.autocommit(lambda conn: read(conn, saga_id))

    def get_status(self, saga_id: str) -> SagaStatus | None:
        self._prepare()
        read = self.dialect.read_status
        return self._run.autocommit(lambda conn: read(conn, saga_id))

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        self._prepare()
        stmt, decode = self.dialect.get_by_key, self.dialect.codec.decode
        return self._run.autocommit(lambda conn: decode(conn.execute(stmt, {"key": key}).all()))

    # -- compare-and-set ------------------------------------------------------------------------
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        check_saga_changes(changes)
        self._prepare()
        values = saga_values(changes)
        values["updated_at"] = now()
        finishing = "status" in values and SagaStatus(values["status"]) in TERMINAL_STATUSES
        return self.dialect.update_saga(self._run, saga_id, values, expect_status, finishing)

    def update_step(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> StepWrite:
        check_step_changes(changes)
        self._prepare()
        request = StepRequest.of(saga_id, index, changes, expect, count_in)
        return self.dialect.write_step(self._run, request)

    def update_step_and_get(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
        get_at: int | None = None,
        start_next: StartNext | None = None,
        read: bool = True,
    ) -> tuple[StepWrite, SagaExecution | None]:
        """The step write, the counter and the next stage's start in one write (one
        statement on PostgreSQL); the execution is read after it only if `read` and
        the counter reached `get_at`."""
        check_step_changes(changes)
        self._prepare()
        request = StepRequest.of(saga_id, index, changes, expect, count_in, get_at, start_next)
        write = self.dialect.write_step(self._run, request)
        if read and write.applied and get_at is not None and write.count == get_at:
            return write, self.get(saga_id)
        return write, None

    def update_step_and_finish(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        saga_changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> tuple[StepWrite, bool]:
        """The step's write and the saga's end in one transaction (one statement with its
        ``pg_notify`` on PostgreSQL, one COMMIT elsewhere)."""
        check_step_changes(changes)
        check_saga_changes(saga_changes)
        self._prepare()
        finish = saga_values(saga_changes)
        request = StepRequest.finishing(saga_id, index, changes, expect, count_in, finish)
        write = self.dialect.write_step(self._run, request)
        return write, write.applied and write.saga_status is SagaStatus.RUNNING

    # -- leases and late outcomes ----------------------------------------------------------------
    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """Extend the leases still held, claim unowned attempts, return the lost leases.

        One ``UPDATE`` of the steps table joined to the leases, with the conditions
        of `Lease.expect` per lease, evaluated by the server on the locked rows
        (`celery_saga_sql.leases`): one statement for any number of leases on
        PostgreSQL, one per `renew_batch` leases elsewhere (on MySQL/MariaDB one more
        read when a lease was lost). Only step rows are written: a heartbeat is not a
        change of the saga, so the execution's ``updated_at`` is left alone.
        """
        if not leases:
            return []
        self._prepare()
        expires = float(expires_at)
        distinct = sorted(dict.fromkeys(leases), key=lease_order)  # one lock order
        batch = len(distinct) if self.dialect.renews_any_number else self.renew_batch
        kept: set[Lease] = set()
        for start in range(0, len(distinct), batch):
            kept.update(self.dialect.renew(self._run, distinct[start : start + batch], expires))
        return [lease for lease in leases if lease not in kept]

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        """Create or move the late-success entry of `attempt`, under the step's row lock:
        one write transaction that reads the step's ``late`` JSON, checks the entry in
        Python, then writes it back with the execution's ``updated_at``."""
        encoded = {name: plain_value(value) for name, value in changes.items()}
        self._prepare()
        return self.dialect.record_late(self._run, saga_id, index, attempt, encoded, expect_state)

    # -- listing and housekeeping ----------------------------------------------------------------
    def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        created_before: float | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent_id: str | None = None,
    ) -> Page:
        """One indexed query, newest first (see `celery_saga_sql.listing`)."""
        wanted = normalize_status(status)
        check_limit(limit)
        after = decode_cursor(cursor) if cursor else None
        self._prepare()
        stmt = listing_query(
            self.tables.executions,
            status=wanted,
            name=name,
            parent_id=parent_id,
            created_before=created_before,
            created_after=created_after,
            after=after,
            limit=limit,
        )
        rows = self._run.autocommit(lambda conn: conn.execute(stmt).all())
        return Page.of([SagaSummary.from_dict(dict(row._mapping)) for row in rows], limit)

    def delete(self, saga_id: str) -> bool:
        self._prepare()
        return delete_finished(self._run, self.tables, saga_id)

    def purge(self, finished_before: float) -> int:
        self._prepare()
        return purge_finished(self._run, self.tables, finished_before)

    # -- waiting -----------------------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Block until the execution is terminal; None on timeout.

        On PostgreSQL (psycopg 3.2 or later) this waits for a notification on the
        store's channel: every wait of this store object shares one LISTEN connection
        (`listener`): no polling. Elsewhere it polls (`SagaBackend.wait`).
        """
        if not self._notifies:
            return super().wait(saga_id, timeout)
        self._prepare()
        return wait_listening(self, saga_id, timeout)

    def listener(self) -> NotifyListener:
        """The LISTEN connection every `wait` of this store object shares (PostgreSQL),
        made on first use (`celery_saga_sql.listener`)."""
        with self._prepare_lock:
            if self._listener is None:
                self._listener = NotifyListener(lambda: listening_connection(self, self.stats))
            return self._listener

    def listen_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of ``psycopg.connect`` (or ``AsyncConnection.connect``) for a listener.

        The engine's own connection arguments, without SQLAlchemy's adapters.
        """
        return listen_args(self.engine, self._connect_args)

    async def async_wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """`wait` for asyncio: psycopg's async LISTEN on PostgreSQL, polling elsewhere.

        On PostgreSQL (psycopg 3.2 or later) one `AsyncConnection` per event loop
        LISTENs on the store's channel for every waiter (`celery_saga_sql.aio`);
        reads run in a thread. Elsewhere it polls (`SagaBackend.async_wait`).
        """
        if not self._notifies:
            return await super().async_wait(saga_id, timeout)
        from celery_saga_sql.aio import wait_async

        return await wait_async(self, saga_id, timeout)
