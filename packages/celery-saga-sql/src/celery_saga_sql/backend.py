"""`SQLSagaBackend`: the saga state store on PostgreSQL, MySQL/MariaDB or SQLite.

One row per execution, one row per step, one row per counter (see `schema`).
How each operation stays atomic and small:

- `update_step` on PostgreSQL is one statement, so one round trip with no
  BEGIN/COMMIT: a CTE locks the execution row and the step row (``SELECT ...
  FOR UPDATE``), the expectations are checked on them by the server, and
  data-modifying CTEs bump the counter, update that one step row (its ``seq``
  included) and the execution's ``updated_at`` only if they hold.
- On MySQL/MariaDB and SQLite it is one write transaction: lock the same rows
  (on SQLite the transaction began with ``BEGIN IMMEDIATE``), check the
  expectations in Python with `StepExpect.refusal`, then bump the counter with a
  single upsert that returns its new value, and update the step row and the
  execution's ``updated_at``.
- Every writer of a saga locks its execution row first, so writers of one saga
  queue there and never deadlock on each other. The lease conditions of
  `StepExpect` (``lease_free_at``/``lease_holder``, ``lease_owners``) are checked
  with the others, on the locked step row.
- `renew_leases` is one ``UPDATE`` of the steps table joined to the leases (arrays
  on PostgreSQL, a ``VALUES`` list on SQLite, a derived table on MySQL/MariaDB)
  that checks each lease's conditions on the row it renews: it locks step rows
  only, never an execution row, so it cannot deadlock with the step writers.
- `record_late` is a step write: the same locks, then the step's ``late`` JSON is
  read, changed in Python and written back in that transaction.
- `update_saga` is one conditional ``UPDATE ... WHERE saga_id = ? AND status IN
  (...)``: the row lock the UPDATE takes makes it a compare-and-set (PostgreSQL
  and MySQL re-check the condition on the latest row version after waiting). On
  PostgreSQL, a move into a terminal status sends ``pg_notify`` from the same
  statement, so the notification is committed with the change or not at all.
- `create` inserts the execution and its steps in one transaction; the unique
  index on the idempotency key decides between concurrent creators.
- Reads are one statement each (the execution joined to its steps), in
  autocommit mode, so they see one consistent snapshot in one round trip.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    BindParameter,
    ColumnClause,
    ColumnElement,
    Connection,
    CursorResult,
    Executable,
    Integer,
    Row,
    Select,
    String,
    and_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError

from celery_saga.backends.base import (
    Lease,
    Page,
    SagaBackend,
    StepExpect,
    StepWrite,
    check_limit,
    check_saga_changes,
    check_step_changes,
    decode_cursor,
    encode_cursor,
    normalize_status,
    payload_size,
    plain_value,
)
from celery_saga.errors import CorruptRecordError
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    SagaSummary,
    StepRecord,
    StepStatus,
    now,
)
from celery_saga_sql import migrations
from celery_saga_sql.engines import make_engines
from celery_saga_sql.listing import listing_query
from celery_saga_sql.schema import EXECUTION_JSON, STEP_JSON, Tables, build_tables
from celery_saga_sql.urls import DEFAULT_TABLE_PREFIX, parse_store_url, validate_table_prefix

T = TypeVar("T")

#: PostgreSQL SQLSTATEs and MySQL error numbers of a transaction that lost a
#: deadlock or a lock wait and was rolled back: the write is safe to run again.
_RETRY_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
_RETRY_MYSQL_ERRNOS = frozenset({1205, 1213})
_TERMINAL_VALUES = tuple(sorted(s.value for s in TERMINAL_STATUSES))
_PURGE_BATCH = 500


def _dumps(value: Any) -> str:
    """JSON text as stored: compact and ASCII-only.

    Escaping non-ASCII characters keeps the text byte-exact whatever the
    character set of the database or connection, and stores strings that are
    valid JSON but not valid UTF-8 (lone surrogates) as well.
    """
    return json.dumps(plain_value(value), separators=(",", ":"))


def _transient(exc: DBAPIError) -> bool:
    """True if the database rolled the statement back because of lock contention."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in _RETRY_MYSQL_ERRNOS:
        return True
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def _expected(cur: Any, expect: StepExpect | None) -> list[ColumnElement[bool]]:
    """`StepExpect` as SQL conditions on the locked state (agrees with `StepExpect.refusal`)."""
    if expect is None:
        return []
    clauses: list[ColumnElement[bool]] = []
    if expect.status is not None:
        clauses.append(cur.c.status.in_(sorted(s.value for s in expect.status)))
    for stored, equal, at_most in (
        (cur.c.attempt, expect.attempt, expect.attempt_at_most),
        (cur.c.comp_attempt, expect.comp_attempt, expect.comp_attempt_at_most),
    ):
        if equal is not None:
            clauses.append(stored == int(equal))
        if at_most is not None:
            clauses.append(stored <= int(at_most))
    if expect.saga_status is not None:
        clauses.append(cur.c.saga_status.in_(sorted(s.value for s in expect.saga_status)))
    if expect.lease_free_at is not None:
        # Free at that time: no owner, or expired by then, or held by `lease_holder`.
        free: list[ColumnElement[bool]] = [
            cur.c.lease_owner.is_(None),
            and_(
                cur.c.lease_expires_at.is_not(None),
                cur.c.lease_expires_at <= float(expect.lease_free_at),
            ),
        ]
        if expect.lease_holder is not None:
            free.append(cur.c.lease_owner == expect.lease_holder)
        clauses.append(or_(*free))
    if expect.lease_owners is not None:
        names = sorted({owner for owner in expect.lease_owners if owner is not None})
        allowed: list[ColumnElement[bool]] = []
        if names:
            allowed.append(cur.c.lease_owner.in_(names))
        if None in expect.lease_owners:
            allowed.append(cur.c.lease_owner.is_(None))
        clauses.append(or_(*allowed) if allowed else false())
    return clauses


def _step_state(source: Any) -> list[Any]:
    """The step columns a compare-and-set checks and a `StepWrite` reports."""
    c = source.c
    return [c.status, c.attempt, c.comp_attempt, c.lease_owner, c.lease_expires_at]


def _report(
    found: Row[Any], values: Mapping[str, Any] | None = None, count: int | None = None
) -> StepWrite:
    """The `StepWrite` of a step whose locked state was `found` (`_step_state` and
    ``saga_status``): refused if `values` is None, else applied with `values` written."""
    if values is None:
        return StepWrite(
            False,
            StepStatus(found.status),
            int(found.attempt),
            SagaStatus(found.saga_status),
            None,
            int(found.comp_attempt),
            lease_owner=found.lease_owner,
            lease_expires_at=found.lease_expires_at,
        )
    get = values.get
    return StepWrite(
        True,
        StepStatus(get("status", found.status)),
        int(get("attempt", found.attempt)),
        SagaStatus(found.saga_status),
        count,
        int(get("comp_attempt", found.comp_attempt)),
        lease_owner=get("lease_owner", found.lease_owner),
        lease_expires_at=get("lease_expires_at", found.lease_expires_at),
    )


#: A lease as the renewing statement sees it (see `_lease_target`), and the step
#: column each of these is compared with.
_LEASE_FIELDS = ("saga_id", "idx", "owner", "status", "attempt", "comp_attempt")
_LEASE_COMPARED_WITH = ("saga_id", "idx", "lease_owner", "status", "attempt", "comp_attempt")
_RUNNING = StepStatus.RUNNING.value
_COMPENSATING = StepStatus.COMPENSATING.value


def _lease_target(lease: Lease) -> tuple[str, int, str, str, int | None, int | None]:
    """`Lease.expect` as values of `_LEASE_FIELDS`: the step state the lease needs."""
    if lease.compensation:
        return (lease.saga_id, lease.index, lease.owner, _COMPENSATING, None, lease.attempt)
    return (lease.saga_id, lease.index, lease.owner, _RUNNING, lease.attempt, None)


#: The leases' columns on PostgreSQL, where they travel as one array each.
_PG_LEASE_COLUMNS: list[ColumnClause[Any]] = [
    column("saga_id", String()),
    column("idx", Integer()),
    column("owner", String()),
    column("status", String()),
    column("attempt", Integer()),
    column("comp_attempt", Integer()),
]


def _renewed_columns(steps: Any) -> list[Any]:
    """What `_renewed` reads of a renewed step."""
    c = steps.c
    return [c.saga_id, c.idx, c.lease_owner, c.status, c.attempt, c.comp_attempt]


def _lease_order(lease: Lease) -> tuple[str, int, str, int, bool]:
    return (lease.saga_id, lease.index, lease.owner, lease.attempt, lease.compensation)


def _renewed(leases: Sequence[Lease], rows: Sequence[Row[Any]]) -> set[Lease]:
    """The leases that `rows` (steps as renewed: key, owner, status, attempts) show held."""
    found = {(row.saga_id, int(row.idx)): row for row in rows}
    kept: set[Lease] = set()
    for lease in leases:
        row = found.get((lease.saga_id, lease.index))
        if row is None or row.lease_owner != lease.owner:
            continue
        if lease.compensation:
            held = row.status == _COMPENSATING and int(row.comp_attempt) == lease.attempt
        else:
            held = row.status == _RUNNING and int(row.attempt) == lease.attempt
        if held:
            kept.add(lease)
    return kept


def _late_entries(raw: str | None, saga_id: str, index: int) -> dict[str, Any]:
    """A step's stored ``late`` JSON as a dict of entries (NULL or ``null``: none)."""
    late = None if raw is None else json.loads(raw)
    if late is None:
        return {}
    if not isinstance(late, dict) or not all(isinstance(e, dict) for e in late.values()):
        raise CorruptRecordError(f"step {index}: late is {late!r}, not entries by attempt", saga_id)
    return late


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0.002, 0.02) * attempt)


def _pick(name: str, explicit: Any, from_url: Any, default: Any) -> Any:
    if explicit is not None and from_url is not None and explicit != from_url:
        raise ValueError(
            f"{name} is given twice with different values ({explicit!r} as an option, "
            f"{from_url!r} in the URL): give it once"
        )
    if explicit is not None:
        return explicit
    return from_url if from_url is not None else default


def _psycopg_notifies_with_timeout() -> bool:
    """psycopg 3.2 added ``Connection.notifies(timeout=...)``; 3.1 falls back to polling."""
    try:
        import inspect

        import psycopg
    except ImportError:
        return False
    return "timeout" in inspect.signature(psycopg.Connection.notifies).parameters


class _Tx:
    """One write transaction: its connection, and the round trips and bytes it cost."""

    __slots__ = ("conn", "trips", "written")

    def __init__(self, conn: Connection, begin_trips: int) -> None:
        self.conn = conn
        self.trips = begin_trips
        self.written = 0

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
        backend = parsed.backend
        self._postgres = backend == "postgresql"
        self._mysql = backend in ("mysql", "mariadb")
        # psycopg and our SQLite setup send BEGIN as an exchange of its own; PyMySQL
        # starts the transaction implicitly with the first statement.
        self._begin_trips = 0 if self._mysql else 1
        self._notifies = (
            self._postgres
            and self.engine.dialect.driver == "psycopg"
            and _psycopg_notifies_with_timeout()
        )
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self._build_statements()
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
    def _build_statements(self) -> None:
        """Statements that do not change from call to call, built once."""
        e, s = self.tables.executions, self.tables.steps
        self._exec_cols = [c.name for c in e.columns]
        self._step_cols = [c.name for c in s.columns if c.name != "saga_id"]
        joined = (
            select(
                *[c.label(f"e_{c.name}") for c in e.columns],
                *[s.c[name].label(f"s_{name}") for name in self._step_cols],
            )
            .select_from(e.outerjoin(s, s.c.saga_id == e.c.saga_id))
            .order_by(s.c.idx)
        )
        self._get_by_id: Select[Any] = joined.where(e.c.saga_id == bindparam("saga_id"))
        self._get_by_key: Select[Any] = joined.where(e.c.idempotency_key == bindparam("key"))
        self._lock_step: Select[Any] = self._locking()
        self._lock_late: Select[Any] = self._locking(s.c.late)
        self._touch = (
            update(e)
            .where(e.c.saga_id == bindparam("b_saga_id"))
            .values(updated_at=bindparam("b_updated_at"))
        )
        if self._postgres:  # the leases as arrays: one statement text for any number
            arrays = [
                bindparam(f"l_{c.name}", type_=pg_dialect.ARRAY(c.type)) for c in _PG_LEASE_COLUMNS
            ]
            leases = func.unnest(*arrays).table_valued(*_PG_LEASE_COLUMNS).render_derived("v")
            self._renew_unnest = self._renew_from(leases, bindparam("l_expires")).returning(
                *_renewed_columns(s)
            )

    def _locking(self, *extra: Any) -> Select[Any]:
        """Lock the execution row and one step row; read the state `StepExpect` checks."""
        e, s = self.tables.executions, self.tables.steps
        lock = (
            select(e.c.status.label("saga_status"), *_step_state(s), *extra)
            .select_from(e.join(s, s.c.saga_id == e.c.saga_id))
            .where(e.c.saga_id == bindparam("saga_id"), s.c.idx == bindparam("idx"))
            .with_for_update()
        )
        if self._mysql:  # lock the execution row first, as every other writer does
            lock = lock.prefix_with("STRAIGHT_JOIN")
        return lock

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
        """Close every pooled connection."""
        _live_stores.discard(self)
        self.engine.dispose()
        self.read_engine.dispose()

    # -- running statements ------------------------------------------------------------------
    def _write(self, work: Callable[[_Tx], T]) -> T:
        """Run `work` in a write transaction; run it again if it lost a deadlock."""
        attempt = 0
        while True:
            attempt += 1
            with self.engine.connect() as conn:
                tx = _Tx(conn, self._begin_trips)
                try:
                    trans = conn.begin()
                    result = work(tx)
                    # Commit even when `work` only read (a refused compare-and-set):
                    # it releases the locks like a rollback, and psycopg follows a
                    # ROLLBACK with DEALLOCATE ALL, one more round trip.
                    trans.commit()
                    tx.trips += 1
                    return result
                except DBAPIError as exc:
                    tx.trips += 1  # the rollback
                    if attempt >= self.write_attempts or not _transient(exc):
                        raise
                except BaseException:
                    tx.trips += 1
                    raise
                finally:
                    self.stats.add(tx.trips, tx.written)
            _backoff(attempt)

    def _autocommit(
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
                retry = _transient(exc) or (idempotent and exc.connection_invalidated)
                if attempt >= self.write_attempts or not retry:
                    raise
            _backoff(attempt)

    # -- encoding ---------------------------------------------------------------------------
    def _execution_row(self, execution: SagaExecution) -> dict[str, Any]:
        header = execution.header_dict()
        row = {name: header.get(name) for name in self._exec_cols}
        for name in EXECUTION_JSON:
            row[name] = _dumps(header.get(name))
        row["status"] = SagaStatus(header["status"]).value
        return row

    def _step_row(self, saga_id: str, step: StepRecord) -> dict[str, Any]:
        data = step.to_dict()
        data["idx"] = data.pop("index")
        row = {name: data.get(name) for name in self._step_cols}
        for name in STEP_JSON:
            row[name] = _dumps(data.get(name))
        row["saga_id"] = saga_id
        return row

    def _decode(self, rows: Sequence[Row[Any]]) -> SagaExecution | None:
        if not rows:
            return None
        first = rows[0]._mapping
        header: dict[str, Any] = {name: first[f"e_{name}"] for name in self._exec_cols}
        for name in EXECUTION_JSON:
            header[name] = json.loads(header[name])
        steps: list[dict[str, Any]] = []
        for row in rows:
            mapping = row._mapping
            if mapping["s_idx"] is None:
                continue
            step = {name: mapping[f"s_{name}"] for name in self._step_cols}
            step["index"] = step.pop("idx")
            step["no_compensation"] = bool(step["no_compensation"])
            for name in STEP_JSON:
                raw = step[name]
                step[name] = None if raw is None else json.loads(raw)  # NULL: before version 3
            steps.append(step)
        header["steps"] = steps
        return SagaExecution.from_dict(header)

    # -- create and read ------------------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        self._prepare()
        row = self._execution_row(execution)
        step_rows = [self._step_row(execution.saga_id, step) for step in execution.steps]
        executions, steps = self.tables.executions, self.tables.steps

        def insert_all(tx: _Tx) -> None:
            tx.execute(insert(executions), row, written=payload_size(row))
            if step_rows:  # one executemany: batched into one exchange by the drivers
                tx.execute(insert(steps), step_rows, written=payload_size(step_rows))

        key = execution.idempotency_key
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._write(insert_all)
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
        stmt = self._get_by_id
        return self._autocommit(
            lambda conn: self._decode(conn.execute(stmt, {"saga_id": saga_id}).all())
        )

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        self._prepare()
        stmt = self._get_by_key
        return self._autocommit(lambda conn: self._decode(conn.execute(stmt, {"key": key}).all()))

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
        executions = self.tables.executions
        values: dict[str, Any] = {}
        for name, value in changes.items():
            plain = plain_value(value)
            if name == "status":
                plain = SagaStatus(plain).value
            values[name] = _dumps(plain) if name in EXECUTION_JSON else plain
        values["updated_at"] = now()
        stmt = update(executions).where(executions.c.saga_id == saga_id).values(values)
        if expect_status is not None:
            allowed = sorted({SagaStatus(s).value for s in expect_status})
            stmt = stmt.where(executions.c.status.in_(allowed))
        finishing = "status" in values and SagaStatus(values["status"]) in TERMINAL_STATUSES
        written = payload_size(*values, *values.values())
        if self._postgres and finishing:
            # UPDATE and NOTIFY in one statement: the notification is sent when the
            # change commits, and only if the compare-and-set applied.
            done = stmt.returning(executions.c.saga_id).cte("done")
            channel = self.tables.channel
            notify = select(done.c.saga_id, func.pg_notify(channel, done.c.saga_id))
            return self._autocommit(
                lambda conn: len(conn.execute(notify).all()) == 1,
                written=written,
                idempotent=False,
            )
        return self._autocommit(
            lambda conn: conn.execute(stmt).rowcount == 1, written=written, idempotent=False
        )

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
        values: dict[str, Any] = {}
        for name, value in changes.items():
            plain = plain_value(value)
            if name == "status":
                plain = StepStatus(plain).value
            values[name] = _dumps(plain) if name in STEP_JSON else plain
        if self._postgres:
            return self._update_step_in_one_statement(saga_id, index, values, expect, count_in)
        key = {"saga_id": saga_id, "idx": index}

        def write(tx: _Tx) -> StepWrite:
            found = tx.execute(self._lock_step, key).one_or_none()
            if found is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            if expect is not None and expect.refusal(
                StepStatus(found.status),
                int(found.attempt),
                int(found.comp_attempt),
                SagaStatus(found.saga_status),
                found.lease_owner,
                found.lease_expires_at,
            ):
                return _report(found)
            count = self._apply_step(tx, saga_id, index, dict(values), count_in)
            return _report(found, values, count)

        return self._write(write)

    def _update_step_in_one_statement(
        self,
        saga_id: str,
        index: int,
        values: dict[str, Any],
        expect: StepExpect | None,
        count_in: str | None,
    ) -> StepWrite:
        """`update_step` on PostgreSQL: one statement in autocommit, one round trip.

        ``cur`` locks the execution row and the step row (``SELECT ... FOR
        UPDATE``: after waiting for another writer it returns the rows as that
        writer committed them); the expectations are evaluated on ``cur`` by the
        server, in the same terms as `StepExpect.refusal`; the counter upsert, the
        step update and the ``updated_at`` touch are data-modifying CTEs that run
        only if they hold, and the counter's new value reaches the step's ``seq``
        through ``RETURNING``. The statement commits as a whole or not at all.
        """
        e, s = self.tables.executions, self.tables.steps
        stamp = now()
        row = dict(values)
        written = payload_size(*row, *row.values(), "updated_at", stamp)
        if count_in is not None:
            written += payload_size(saga_id, count_in, 1)
        cur = (
            select(e.c.status.label("saga_status"), *_step_state(s))
            .select_from(e.join(s, s.c.saga_id == e.c.saga_id))
            .where(e.c.saga_id == saga_id, s.c.idx == index)
            .with_for_update()
            .cte("cur")
        )
        holds = exists(select(literal_column("1")).select_from(cur).where(*_expected(cur, expect)))
        ctes = []
        columns: list[Any] = [cur.c.saga_status, *_step_state(cur), holds.label("applied")]
        if count_in is not None:
            bumped = self._upsert_counter(saga_id, count_in, only_if=holds).cte("bumped")
            row["seq"] = select(bumped.c.value).scalar_subquery()
            columns.append(select(bumped.c.value).scalar_subquery().label("bumped_to"))
            ctes.append(bumped)
        if row:
            step = update(s).where(s.c.saga_id == saga_id, s.c.idx == index, holds)
            ctes.append(step.values(row).returning(s.c.idx).cte("stepped"))
        touch = update(e).where(e.c.saga_id == saga_id, holds).values(updated_at=stamp)
        ctes.append(touch.returning(e.c.saga_id).cte("touched"))
        stmt = select(*columns).add_cte(*ctes)
        found = self._autocommit(
            lambda conn: conn.execute(stmt).one_or_none(), written=written, idempotent=False
        )
        if found is None:
            raise KeyError(f"no step {index} in saga {saga_id}")
        if not found.applied:
            return _report(found)
        return _report(found, values, None if count_in is None else int(found.bumped_to))

    def _apply_step(
        self, tx: _Tx, saga_id: str, index: int, row: dict[str, Any], count_in: str | None
    ) -> int | None:
        """Write one step row, the counter and the execution's ``updated_at`` (rows locked).

        MySQL/MariaDB do it in one multi-table UPDATE after the counter upsert,
        SQLite in one statement per table (no network: statements cost no round
        trip there). PostgreSQL writes steps in `_update_step_in_one_statement`, and
        comes here only for `record_late` (one statement per table, like SQLite).
        """
        e, s = self.tables.executions, self.tables.steps
        stamp = now()
        written = payload_size(*row, *row.values(), "updated_at", stamp)
        if count_in is not None:
            written += payload_size(saga_id, count_in, 1)
        count: int | None = None
        if count_in is not None:
            count = self._bump(tx, saga_id, count_in)
            row["seq"] = count
        if self._mysql:
            values: dict[Any, Any] = {s.c[name]: value for name, value in row.items()}
            values[e.c.updated_at] = stamp
            both = update(s).where(  # one multi-table UPDATE
                s.c.saga_id == saga_id, s.c.idx == index, e.c.saga_id == s.c.saga_id
            )
            tx.execute(both.values(values))
            tx.written += written
            return count
        if row:
            step = update(s).where(s.c.saga_id == saga_id, s.c.idx == index)
            tx.execute(step.values(row))
        tx.execute(self._touch, {"b_saga_id": saga_id, "b_updated_at": stamp}, written=written)
        return count

    def _upsert_counter(
        self, saga_id: str, name: str, only_if: ColumnElement[bool] | None = None
    ) -> Any:
        """``INSERT ... ON CONFLICT DO UPDATE value = value + 1 RETURNING value``.

        With `only_if`, the row is inserted or bumped only when that holds.
        """
        counters = self.tables.counters
        dialect_insert = pg_dialect.insert if self._postgres else sqlite_dialect.insert
        stmt = dialect_insert(counters)
        if only_if is None:
            stmt = stmt.values(saga_id=saga_id, name=name, value=1)
        else:
            source = select(
                cast(literal(saga_id), counters.c.saga_id.type),
                cast(literal(name), counters.c.name.type),
                literal_column("1"),
            ).where(only_if)
            stmt = stmt.from_select(["saga_id", "name", "value"], source)
        return stmt.on_conflict_do_update(
            index_elements=[counters.c.saga_id, counters.c.name],
            set_={"value": counters.c.value + 1},
        ).returning(counters.c.value)

    def _bump(self, tx: _Tx, saga_id: str, name: str) -> int:
        """Increment the execution's counter `name` in one upsert; return its new value."""
        if self._mysql:
            counters = self.tables.counters
            # LAST_INSERT_ID(expr) hands the new value back in the OK packet.
            stmt = (
                mysql_dialect.insert(counters)
                .values(saga_id=saga_id, name=name, value=func.last_insert_id(1))
                .on_duplicate_key_update(value=func.last_insert_id(counters.c.value + 1))
            )
            return int(tx.execute(stmt).lastrowid)
        return int(tx.execute(self._upsert_counter(saga_id, name)).scalar_one())

    # -- leases and late outcomes ----------------------------------------------------------------
    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """Extend the leases still held, claim unowned attempts, return the lost leases.

        One ``UPDATE`` of the steps table joined to the leases, with the conditions
        of `Lease.expect` per lease (the step runs that attempt, or that compensation
        attempt, and its owner is the lease's or nobody), evaluated by the server on
        the locked rows:

        - PostgreSQL: the leases travel as arrays (``unnest``), ``RETURNING`` names
          the renewed steps: one round trip for any number of leases.
        - SQLite: the leases are a ``VALUES`` list, ``RETURNING`` likewise: one
          statement per `renew_batch` leases.
        - MySQL/MariaDB (no ``UPDATE ... RETURNING``): the leases are a derived
          table, and the rows matched tell whether every lease was renewed: one
          round trip per `renew_batch` leases when none is lost; otherwise one more
          statement reads which were not.

        Only step rows are written and locked: a heartbeat is not a change of the
        saga, so the execution's ``updated_at`` is left alone (as in the memory store).
        """
        if not leases:
            return []
        self._prepare()
        expires = float(expires_at)
        distinct = sorted(dict.fromkeys(leases), key=_lease_order)  # one lock order
        batch = len(distinct) if self._postgres else self.renew_batch
        kept: set[Lease] = set()
        for start in range(0, len(distinct), batch):
            kept.update(self._renew(distinct[start : start + batch], expires))
        return [lease for lease in leases if lease not in kept]

    def _renew(self, leases: list[Lease], expires: float) -> set[Lease]:
        """Renew `leases` (distinct) in one statement; return those renewed."""
        s = self.tables.steps
        targets = [_lease_target(lease) for lease in leases]
        written = payload_size(expires, *(t[:3] for t in targets))
        if self._postgres:
            columns = zip(*targets, strict=True)
            params: dict[str, Any] = {
                f"l_{name}": list(values)
                for name, values in zip(_LEASE_FIELDS, columns, strict=True)
            }
            params["l_expires"] = expires
            stmt = self._renew_unnest
            rows = self._autocommit(lambda conn: conn.execute(stmt, params).all(), written=written)
            return _renewed(leases, rows)
        if not self._mysql:  # SQLite
            stmt = self._renew_from(self._sqlite_leases(len(targets)), expires)
            params = {
                f"l{i}_{name}": value
                for i, t in enumerate(targets)
                for name, value in zip(_LEASE_FIELDS, t, strict=True)
            }
            stmt = stmt.returning(*_renewed_columns(s))
            rows = self._autocommit(lambda conn: conn.execute(stmt, params).all(), written=written)
            return _renewed(leases, rows)
        stmt = self._renew_from(self._mysql_leases(targets), expires)
        matched = self._autocommit(lambda conn: conn.execute(stmt).rowcount, written=written)
        if matched == len({(lease.saga_id, lease.index) for lease in leases}) == len(leases):
            return set(leases)  # every step matched, and each has one lease: all renewed
        keys = [(lease.saga_id, lease.index) for lease in leases]
        read = select(*_renewed_columns(s)).where(
            tuple_(s.c.saga_id, s.c.idx).in_(keys), s.c.lease_expires_at == expires
        )
        rows = self._autocommit(lambda conn: conn.execute(read).all())
        return _renewed(leases, rows)

    def _renew_from(self, v: Any, expires: Any) -> Any:
        """The renewing ``UPDATE``, joined to `v` (one row per lease: `_LEASE_FIELDS`)."""
        s = self.tables.steps
        return (
            update(s)
            .where(
                s.c.saga_id == v.c.saga_id,
                s.c.idx == v.c.idx,
                s.c.status == v.c.status,
                # One of the two is NULL in `v`: a forward lease names the attempt, a
                # compensation's lease the compensation attempt.
                or_(s.c.attempt == v.c.attempt, s.c.comp_attempt == v.c.comp_attempt),
                or_(s.c.lease_owner == v.c.owner, s.c.lease_owner.is_(None)),
            )
            .values({s.c.lease_owner: v.c.owner, s.c.lease_expires_at: expires})
        )

    def _sqlite_leases(self, n: int) -> Any:
        """A ``VALUES`` list of `n` leases (SQLite names its columns column1...)."""
        rows = ", ".join(
            "(" + ", ".join(f":l{i}_{name}" for name in _LEASE_FIELDS) + ")" for i in range(n)
        )
        named = ", ".join(f"column{i + 1} AS {name}" for i, name in enumerate(_LEASE_FIELDS))
        fields: list[ColumnClause[Any]] = [column(name) for name in _LEASE_FIELDS]
        return text(f"SELECT {named} FROM (VALUES {rows})").columns(*fields).subquery("v")

    def _mysql_leases(self, targets: list[tuple[Any, ...]]) -> Any:
        """The leases as a derived table (``SELECT ... UNION ALL SELECT ...``), each
        value typed as the step column it is compared with (owners as VARBINARY)."""
        types = [self.tables.steps.c[name].type for name in _LEASE_COMPARED_WITH]
        rows = [
            select(
                *(
                    literal(value, type_).label(name)
                    for name, value, type_ in zip(_LEASE_FIELDS, target, types, strict=True)
                )
            )
            for target in targets
        ]
        return (rows[0] if len(rows) == 1 else union_all(*rows)).subquery("v")

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        """Create or move the late-success entry of `attempt`, under the step's row lock.

        One write transaction: lock the execution row and the step row (``SELECT ...
        FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE``) reading the step's ``late`` JSON,
        check the entry in Python, then write the step's ``late`` and the execution's
        ``updated_at`` as `update_step` does.
        """
        entry_key = str(attempt)
        encoded = {name: plain_value(value) for name, value in changes.items()}
        self._prepare()
        key = {"saga_id": saga_id, "idx": index}

        def write(tx: _Tx) -> StepWrite:
            found = tx.execute(self._lock_late, key).one_or_none()
            if found is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            late = _late_entries(found.late, saga_id, index)
            entry = late.get(entry_key)
            if (entry is None) != (expect_state is None) or (
                entry is not None and entry.get("state") != expect_state
            ):
                return _report(found)
            late[entry_key] = {**(entry or {}), **encoded}
            self._apply_step(tx, saga_id, index, {"late": _dumps(late)}, None)
            return replace(_report(found), applied=True)

        return self._write(write)

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
        rows = self._autocommit(lambda conn: conn.execute(stmt).all())
        items = [SagaSummary.from_dict(dict(row._mapping)) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = encode_cursor(last.created_at, last.saga_id)
        return Page(items, next_cursor)

    def _drop(self, tx: _Tx, saga_ids: Sequence[str]) -> None:
        """Delete executions with their steps and counters (rows already locked)."""
        ids: BindParameter[str] = bindparam("ids", expanding=True)
        for table in (self.tables.steps, self.tables.counters, self.tables.executions):
            tx.execute(delete(table).where(table.c.saga_id.in_(ids)), {"ids": saga_ids})

    def delete(self, saga_id: str) -> bool:
        self._prepare()
        e = self.tables.executions

        def work(tx: _Tx) -> bool:
            found = tx.execute(
                select(e.c.status).where(e.c.saga_id == saga_id).with_for_update()
            ).scalar()
            if found is None:
                return False
            if SagaStatus(found) not in TERMINAL_STATUSES:
                raise ValueError(
                    f"saga {saga_id} is {found}: only finished executions "
                    "can be deleted (cancel it first, or wait for it to finish)"
                )
            self._drop(tx, [saga_id])
            return True

        return self._write(work)

    def purge(self, finished_before: float) -> int:
        self._prepare()
        e = self.tables.executions
        cutoff = float(finished_before)
        doomed = (
            select(e.c.saga_id)
            .where(
                e.c.status.in_(_TERMINAL_VALUES),
                or_(
                    e.c.finished_at < cutoff,
                    and_(e.c.finished_at.is_(None), e.c.updated_at < cutoff),
                ),
            )
            .limit(_PURGE_BATCH)
            .with_for_update()
        )

        def batch(tx: _Tx) -> int:
            ids: list[str] = [str(i) for i in tx.execute(doomed).scalars().all()]
            if ids:
                self._drop(tx, ids)
            return len(ids)

        total = 0
        while True:
            removed = self._write(batch)
            total += removed
            if removed < _PURGE_BATCH:
                return total

    # -- waiting -----------------------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Block until the execution is terminal; None on timeout.

        On PostgreSQL (psycopg 3.2 or later) this LISTENs on the store's channel
        on a connection of its own, then reads the execution, then sleeps until a
        notification names it: no polling. Elsewhere it polls (`SagaBackend.wait`).
        """
        if not self._notifies:
            return super().wait(saga_id, timeout)
        self._prepare()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._listener() as conn:
            while True:
                execution = self.get(saga_id)
                if execution is not None and execution.status in TERMINAL_STATUSES:
                    return execution
                woken = self._await_notice(conn, saga_id, deadline)
                if not woken and deadline is not None and time.monotonic() >= deadline:
                    return None

    def listen_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of ``psycopg.connect`` (or ``AsyncConnection.connect``) for a listener.

        The engine's own connection arguments, without SQLAlchemy's adapters.
        """
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        cparams.pop("context", None)  # SQLAlchemy's adapters are not needed here
        cparams.update(self._connect_args)
        return tuple(cargs), dict(cparams)

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

    def _listener(self) -> Any:
        """A new autocommit psycopg connection that LISTENs on the store's channel."""
        import psycopg
        from psycopg import sql

        cargs, cparams = self.listen_args()
        conn = psycopg.connect(*cargs, **cparams, autocommit=True)
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.tables.channel)))
        except BaseException:
            conn.close()
            raise
        self.stats.add(1)
        return conn

    def _await_notice(self, conn: Any, saga_id: str, deadline: float | None) -> bool:
        """Sleep until a notification names `saga_id` (True) or time is up (False)."""
        recheck = time.monotonic() + self.notify_recheck
        while True:
            limit = recheck if deadline is None else min(recheck, deadline)
            left = limit - time.monotonic()
            if left <= 0:
                return False
            for notice in conn.notifies(timeout=left, stop_after=1):
                if notice.payload == saga_id:
                    return True
