"""The versioned schema of the SQL store, and its upgrade path.

`MIGRATIONS` is the ordered list of schema versions; the version a database is
at lives in the one row of ``<prefix>schema_version``. `upgrade` applies the
missing migrations in order, each recorded as it is applied, under a lock so
that many workers starting at once upgrade the schema exactly once:

- PostgreSQL: one transaction (DDL is transactional) holding an advisory lock;
- SQLite: one ``BEGIN IMMEDIATE`` transaction (DDL is transactional too);
- MySQL/MariaDB: a named lock (``GET_LOCK``). MySQL commits implicitly around
  DDL, so a migration there must be safe to run again if it was interrupted
  (create with ``checkfirst``, and so on).

A database at a newer version than `LATEST` is refused: an older package must
not write rows whose meaning it does not know.

Adding a migration: append ``Migration(n + 1, "what it does", function)``. The
function gets a connection inside the locked transaction and the `Tables` of the
current code; once a later migration changes a table, freeze the shape the
earlier migration created in that earlier function, so a fresh database still
goes through every version in order.

Run it from a shell with ``python -m celery_saga_sql upgrade <url>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.schema import CreateColumn

from celery_saga.errors import SagaError, SchemaVersionError, StoreNotFound
from celery_saga_sql.schema import (
    EXACT_NAME,
    LONG_TEXT,
    MYSQL_TABLE_OPTIONS,
    NAME,
    PARENT_INDEX,
    SAGA_ID,
    STATUS,
    Tables,
    build_tables,
)
from celery_saga_sql.version import __version__

#: Seconds to wait for another process that is upgrading the same tables.
LOCK_TIMEOUT = 60


class SchemaNotUpgraded(SagaError):
    """The tables are missing or older than this package, and may not be upgraded here."""


class TablesNotFound(SchemaNotUpgraded, StoreNotFound):
    """The tables do not exist at all (a store opened without `create_tables`).

    A `StoreNotFound` too, so read-only tools report "no store there" (``celery saga
    list --backend`` with a mistyped URL exits 3 instead of creating tables).
    """


@dataclass(frozen=True)
class Migration:
    """One schema version: what it does, and the function that does it."""

    version: int
    description: str
    apply: Callable[[Connection, Tables], None]


@dataclass(frozen=True)
class UpgradeResult:
    """What `upgrade` found and did."""

    before: int
    after: int
    applied: tuple[int, ...]


def _v1_executions(prefix: str, metadata: MetaData) -> Table:
    """The executions table as version 1 created it (frozen: version 2 altered it)."""
    return Table(
        f"{prefix}executions",
        metadata,
        Column("saga_id", SAGA_ID, primary_key=True),
        Column("saga_name", EXACT_NAME, nullable=False),
        Column("status", STATUS, nullable=False),
        Column("idempotency_key", EXACT_NAME, nullable=True),
        Column("definition_hash", String(128), nullable=False),
        Column("queue", NAME, nullable=True),
        Column("input", LONG_TEXT, nullable=False),
        Column("output", LONG_TEXT, nullable=False),
        Column("error", LONG_TEXT, nullable=True),
        Column("failed_step", Integer, nullable=True),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
        Column("finished_at", Double, nullable=True),
        Column("schema", Integer, nullable=False),
        UniqueConstraint("idempotency_key", name=f"{prefix}uq_executions_idempotency_key"),
        Index(f"{prefix}ix_executions_status_created", "status", "created_at", "saga_id"),
        Index(f"{prefix}ix_executions_name_created", "saga_name", "created_at", "saga_id"),
        Index(f"{prefix}ix_executions_created", "created_at", "saga_id"),
        Index(f"{prefix}ix_executions_updated", "updated_at"),
        **MYSQL_TABLE_OPTIONS,
    )


def _v1_steps(prefix: str, metadata: MetaData) -> Table:
    """The steps table as version 1 created it (frozen: version 3 altered it)."""
    return Table(
        f"{prefix}steps",
        metadata,
        Column("saga_id", SAGA_ID, nullable=False),
        Column("idx", Integer, nullable=False, autoincrement=False),
        Column("task_name", NAME, nullable=False),
        Column("stage", Integer, nullable=False),
        Column("compensation_task_name", NAME, nullable=True),
        Column("no_compensation", Boolean, nullable=False),
        Column("status", STATUS, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("task_id", NAME, nullable=True),
        Column("retries", Integer, nullable=False),
        Column("seq", Integer, nullable=True),
        Column("started_at", Double, nullable=True),
        Column("finished_at", Double, nullable=True),
        Column("output", LONG_TEXT, nullable=False),
        Column("compensation_data", LONG_TEXT, nullable=False),
        Column("error", LONG_TEXT, nullable=True),
        Column("comp_attempt", Integer, nullable=False),
        Column("comp_task_id", NAME, nullable=True),
        Column("comp_started_at", Double, nullable=True),
        Column("comp_finished_at", Double, nullable=True),
        Column("comp_error", LONG_TEXT, nullable=True),
        PrimaryKeyConstraint("saga_id", "idx", name=f"{prefix}pk_steps"),
        **MYSQL_TABLE_OPTIONS,
    )


def _v1_create_tables(conn: Connection, tables: Tables) -> None:
    metadata = MetaData()
    created = [
        _v1_executions(tables.prefix, metadata),
        _v1_steps(tables.prefix, metadata),
        # Not changed since version 1: the current definition is the version 1 shape.
        tables.counters.to_metadata(metadata),
    ]
    metadata.create_all(conn, tables=created, checkfirst=True)


def _add_columns(conn: Connection, table: Table, names: tuple[str, ...]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of `names` the table lacks yet.

    Columns already there are skipped, so the migration can run again after an
    interruption (MySQL/MariaDB commit each ALTER on their own).
    """
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    quoted = conn.dialect.identifier_preparer.format_table(table)
    for name in names:
        if name not in present:
            spec = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {quoted} ADD COLUMN {spec}"))


def _v2_deadline_and_cancelled(conn: Connection, tables: Tables) -> None:
    # Nullable without a default: rows written before read back as None. On
    # PostgreSQL and SQLite adding them changes only the catalog, no row is
    # rewritten; MySQL 8 and MariaDB 10.3+ add such a last column in place too.
    _add_columns(conn, tables.executions, ("deadline_at", "cancelled_at"))


#: The step columns version 3 adds, in the order they are added.
V3_STEP_COLUMNS = ("lease_owner", "lease_expires_at", "sent_at", "sends", "late")


def _v3_leases_and_late(conn: Connection, tables: Tables) -> None:
    # All nullable without a default but `sends`, NOT NULL DEFAULT 0: rows written
    # before read back with no lease, no sent_at, sends 0 and no late successes. A
    # constant default is stored in the catalog on PostgreSQL 11+ and SQLite (no row
    # is rewritten), and MariaDB 10.3+ / MySQL 8 add such a last column in place.
    _add_columns(conn, tables.steps, V3_STEP_COLUMNS)


#: The columns version 4 adds, by table, in the order they are added.
V4_EXECUTION_COLUMNS = ("parent_id", "parent_step", "revert_reason")
V4_STEP_COLUMNS = ("kind", "child_id")


def _v4_composition(conn: Connection, tables: Tables) -> None:
    # Nullable without a default, but `kind`, NOT NULL DEFAULT 'task': rows written
    # before read back as top-level executions of task steps, never reverted. As in
    # version 3, none of these rewrites a row. The index on (parent_id, created_at,
    # saga_id) serves `list(parent_id=...)`; `checkfirst` skips it when an interrupted
    # upgrade (MySQL commits each statement) already made it.
    _add_columns(conn, tables.executions, V4_EXECUTION_COLUMNS)
    _add_columns(conn, tables.steps, V4_STEP_COLUMNS)
    name = PARENT_INDEX.format(prefix=tables.prefix)
    index = next(i for i in tables.executions.indexes if i.name == name)
    index.create(conn, checkfirst=True)


#: The columns version 5 adds, by table, in the order they are added.
V5_EXECUTION_COLUMNS = ("trace_context",)
V5_STEP_COLUMNS = ("worker", "comp_worker", "history")


def _v5_attempts_and_traces(conn: Connection, tables: Tables) -> None:
    # All nullable without a default: rows written before read back with no worker, no
    # history and no trace context. As in versions 3 and 4, no row is rewritten.
    _add_columns(conn, tables.executions, V5_EXECUTION_COLUMNS)
    _add_columns(conn, tables.steps, V5_STEP_COLUMNS)


#: The index version 6 drops (named with the table prefix).
V6_DROPPED_INDEX = "{prefix}ix_executions_updated"


def _v6_drop_updated_index(conn: Connection, tables: Tables) -> None:
    # No query reads the index on updated_at (recovery lists by status, retention by
    # status and finished_at), and every step write paid for it: the write moves the
    # execution's updated_at, so the index changed with each step, and on PostgreSQL
    # the row's update could not be a HOT one. Skipped when gone already (an
    # interrupted upgrade: MySQL commits each statement).
    name = V6_DROPPED_INDEX.format(prefix=tables.prefix)
    present = {i["name"] for i in inspect(conn).get_indexes(tables.executions.name)}
    if name not in present:
        return
    quote = conn.dialect.identifier_preparer
    statement = f"DROP INDEX {quote.quote(name)}"
    if conn.dialect.name in ("mysql", "mariadb"):
        statement += f" ON {quote.format_table(tables.executions)}"
    conn.execute(text(statement))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the executions, steps and counters tables", _v1_create_tables),
    Migration(
        2,
        "add the deadline_at and cancelled_at columns to the executions table",
        _v2_deadline_and_cancelled,
    ),
    Migration(
        3,
        "add the lease_owner, lease_expires_at, sent_at, sends and late columns to the steps table",
        _v3_leases_and_late,
    ),
    Migration(
        4,
        "add the parent_id, parent_step and revert_reason columns and the parent_id index "
        "to the executions table, and the kind and child_id columns to the steps table",
        _v4_composition,
    ),
    Migration(
        5,
        "add the trace_context column to the executions table, and the worker, comp_worker "
        "and history columns to the steps table",
        _v5_attempts_and_traces,
    ),
    Migration(6, "drop the updated_at index of the executions table", _v6_drop_updated_index),
)
#: The schema version this package writes.
LATEST = MIGRATIONS[-1].version


def _newer_error(tables: Tables, found: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"the celery-saga tables with prefix {tables.prefix!r} are at schema version {found}, "
        f"but celery-saga-sql {__version__} knows versions up to {LATEST}: upgrade "
        "celery-saga-sql on this machine (the tables were left untouched)"
    )


def _read_version(conn: Connection, tables: Tables) -> int:
    if not inspect(conn).has_table(tables.schema_version.name):
        return 0
    found = conn.execute(
        select(tables.schema_version.c.version).where(tables.schema_version.c.id == 1)
    ).scalar()
    return 0 if found is None else int(found)


def _record(conn: Connection, tables: Tables, version: int) -> None:
    import time

    table = tables.schema_version
    result = conn.execute(
        update(table).where(table.c.id == 1).values(version=version, updated_at=time.time())
    )
    if result.rowcount == 0:
        conn.execute(insert(table).values(id=1, version=version, updated_at=time.time()))


def _lock_name(engine: Engine, tables: Tables) -> str:
    digest = hashlib.sha1(f"{engine.url.database}:{tables.prefix}".encode()).hexdigest()
    return f"celery_saga_sql:{digest[:40]}"  # MySQL lock names are at most 64 characters


def _advisory_key(tables: Tables) -> int:
    digest = hashlib.blake2b(f"celery_saga_sql:{tables.prefix}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def _schema_lock(engine: Engine, tables: Tables) -> Iterator[Connection]:
    """A connection in a transaction that no other upgrader of these tables runs beside."""
    backend = engine.dialect.name
    with engine.connect() as conn:
        mysql = backend in ("mysql", "mariadb")
        if mysql:
            name = _lock_name(engine, tables)
            got = conn.execute(select(func.get_lock(name, LOCK_TIMEOUT))).scalar()
            conn.commit()
            if got != 1:
                raise TimeoutError(
                    f"another process held the schema lock {name} for {LOCK_TIMEOUT}s; "
                    "run the upgrade again when it has finished"
                )
        try:
            with conn.begin():  # on SQLite this is BEGIN IMMEDIATE (see engines.py)
                if backend == "postgresql":
                    conn.execute(select(func.pg_advisory_xact_lock(_advisory_key(tables))))
                yield conn
        finally:
            if mysql:
                conn.execute(select(func.release_lock(name)))
                conn.commit()


def current_version(engine: Engine, prefix: str) -> int:
    """The schema version of the tables with `prefix` (0: there are none)."""
    tables = build_tables(prefix)
    with engine.connect() as conn:
        return _read_version(conn, tables)


def upgrade(engine: Engine, prefix: str) -> UpgradeResult:
    """Create or upgrade the tables with `prefix` to `LATEST`; safe to run again.

    Raises `SchemaVersionError` when the database is at a newer version than
    this package knows.
    """
    tables = build_tables(prefix)
    with _schema_lock(engine, tables) as conn:
        before = _read_version(conn, tables)
        if before > LATEST:
            raise _newer_error(tables, before)
        applied: list[int] = []
        if before < LATEST:
            tables.schema_version.create(conn, checkfirst=True)
            for migration in MIGRATIONS:
                if migration.version > before:
                    migration.apply(conn, tables)
                    _record(conn, tables, migration.version)
                    applied.append(migration.version)
    return UpgradeResult(before, LATEST if applied else before, tuple(applied))


def check(engine: Engine, prefix: str) -> int:
    """Make sure the tables with `prefix` are at `LATEST`, without changing anything.

    Raises `SchemaVersionError` for a newer schema and `SchemaNotUpgraded` for
    missing or older tables (with the command that upgrades them).
    """
    tables = build_tables(prefix)
    found = current_version(engine, prefix)
    if found > LATEST:
        raise _newer_error(tables, found)
    if found < LATEST:
        state = "do not exist" if found == 0 else f"are at schema version {found}"
        raise (TablesNotFound if found == 0 else SchemaNotUpgraded)(
            f"the celery-saga tables with prefix {prefix!r} {state}; this celery-saga-sql "
            f"needs version {LATEST}. Create or upgrade them with: python -m celery_saga_sql "
            f"upgrade <url> --table-prefix {prefix}  (or let the store do it: create_tables=True)"
        )
    return found
