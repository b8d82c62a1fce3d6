"""The tables of the SQL store, as SQLAlchemy Core `Table` objects.

All names start with the store's table prefix, so several stores (or test runs)
can share one database. User payloads (inputs, outputs, compensation data) are
JSON kept as TEXT that this package writes with `json.dumps` (ASCII-only, so
no character set can alter it) and reads with `json.loads`, never a dialect JSON
type, which would normalise numbers or key order: the values come back exact
(big integers, floats, unicode) on every database. Times are epoch seconds in
double-precision columns, which hold a Python float exactly.

MySQL/MariaDB tables use ``utf8mb4`` with the binary collation, so text compares
case-sensitively (a case-insensitive collation would make ``order-1`` and
``ORDER-1`` the same idempotency key). Saga names, idempotency keys and lease
owners, found or compared by equality, are VARBINARY there (`ExactString`): even
the binary collation ignores trailing spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from celery_saga_sql.urls import validate_table_prefix

#: Unbounded text: TEXT everywhere, LONGTEXT on MySQL/MariaDB (whose TEXT stops at 64 KiB).
LONG_TEXT: TypeEngine[str] = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_MYSQL_FAMILY = ("mysql", "mariadb")


class ExactString(TypeDecorator[str]):
    """A string compared exactly, trailing spaces included, on every database.

    MySQL/MariaDB compare VARCHAR values with PAD SPACE collations (``utf8mb4_bin``
    included), so ``'order-1'`` and ``'order-1 '`` would be one idempotency key
    there. On those servers the value is kept as UTF-8 in VARBINARY, compared
    byte for byte; elsewhere it is a plain VARCHAR.
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _MYSQL_FAMILY:
            return dialect.type_descriptor(mysql.VARBINARY(self.length * 4))
        return dialect.type_descriptor(String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name in _MYSQL_FAMILY:
            return value.encode()
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode()
        return value  # type: ignore[no-any-return]


#: Saga ids are UUID strings.
SAGA_ID = String(36)
#: Names, task ids, queue names, idempotency keys (core allows at most 255 characters).
NAME = String(255)
#: Saga names and idempotency keys: looked up by equality, so compared exactly.
EXACT_NAME = ExactString(255)
STATUS = String(24)
#: A step's kind (`StepKind` value: task, external, saga).
STEP_KIND = String(16)
#: The name of the children index (schema version 4), for `build_tables` and migrations.
PARENT_INDEX = "{prefix}ix_executions_parent_created"
#: Lease owners (``host/pid/task-id``): compared exactly by the lease conditions.
LEASE_OWNER = ExactString(512)

#: Table options on MySQL/MariaDB (ignored by the other databases).
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


@dataclass(frozen=True)
class Tables:
    """The store's tables for one prefix."""

    prefix: str
    metadata: MetaData
    executions: Table
    steps: Table
    counters: Table
    schema_version: Table

    @property
    def data_tables(self) -> list[Table]:
        """The tables that hold sagas (everything but `schema_version`)."""
        return [self.executions, self.steps, self.counters]

    @property
    def channel(self) -> str:
        """The PostgreSQL LISTEN/NOTIFY channel announcing finished executions."""
        return f"{self.prefix}finished"


def build_tables(prefix: str) -> Tables:
    """Define the tables for `prefix` at the latest schema version.

    Nothing is created here: `migrations` creates and alters the tables, version
    by version. A change to a table here needs a migration that makes it.
    """
    prefix = validate_table_prefix(prefix)
    metadata = MetaData()
    executions = Table(
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
        # Added by schema version 2 (ALTER TABLE ... ADD COLUMN, so they come last).
        Column("deadline_at", Double, nullable=True),
        Column("cancelled_at", Double, nullable=True),
        # Added by schema version 4 (saga composition): a child saga's parent execution
        # and step, and why a completed saga was reverted. NULL in rows written before.
        Column("parent_id", SAGA_ID, nullable=True),
        Column("parent_step", Integer, nullable=True),
        Column("revert_reason", LONG_TEXT, nullable=True),
        # Added by schema version 5: the W3C trace context the saga started in (JSON),
        # NULL when tracing was off or in rows written before.
        Column("trace_context", LONG_TEXT, nullable=True),
        UniqueConstraint("idempotency_key", name=f"{prefix}uq_executions_idempotency_key"),
        # Listing is newest first by (created_at, saga_id), optionally by status or name,
        # or among the children of one execution.
        Index(f"{prefix}ix_executions_status_created", "status", "created_at", "saga_id"),
        Index(f"{prefix}ix_executions_name_created", "saga_name", "created_at", "saga_id"),
        Index(f"{prefix}ix_executions_created", "created_at", "saga_id"),
        Index(PARENT_INDEX.format(prefix=prefix), "parent_id", "created_at", "saga_id"),
        **MYSQL_TABLE_OPTIONS,
    )
    steps = Table(
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
        # Added by schema version 3 (ALTER TABLE ... ADD COLUMN, so they come last).
        # Rows written before read back with no lease, no sent_at, sends 0 and no late
        # successes: every column is nullable but `sends`, whose default fills old rows.
        Column("lease_owner", LEASE_OWNER, nullable=True),
        Column("lease_expires_at", Double, nullable=True),
        Column("sent_at", Double, nullable=True),
        Column("sends", Integer, nullable=False, server_default=text("0")),
        Column("late", LONG_TEXT, nullable=True),
        # Added by schema version 4: what carries the step out (rows written before are
        # task steps: the default fills them) and the child execution of a saga step.
        Column("kind", STEP_KIND, nullable=False, server_default=text("'task'")),
        Column("child_id", SAGA_ID, nullable=True),
        # Added by schema version 5: who ran the current forward and compensation
        # attempts, and the attempts that are over (JSON). NULL in rows written before.
        Column("worker", NAME, nullable=True),
        Column("comp_worker", NAME, nullable=True),
        Column("history", LONG_TEXT, nullable=True),
        PrimaryKeyConstraint("saga_id", "idx", name=f"{prefix}pk_steps"),
        **MYSQL_TABLE_OPTIONS,
    )
    counters = Table(
        f"{prefix}counters",
        metadata,
        Column("saga_id", SAGA_ID, nullable=False),
        Column("name", NAME, nullable=False),
        Column("value", Integer, nullable=False),
        PrimaryKeyConstraint("saga_id", "name", name=f"{prefix}pk_counters"),
        **MYSQL_TABLE_OPTIONS,
    )
    schema_version = Table(
        f"{prefix}schema_version",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("version", Integer, nullable=False),
        Column("updated_at", Double, nullable=False),
        **MYSQL_TABLE_OPTIONS,
    )
    return Tables(prefix, metadata, executions, steps, counters, schema_version)


#: StepRecord field -> steps column, where the names differ.
STEP_COLUMN = {"index": "idx"}
#: Columns holding JSON text (encoded and decoded by the store). ``late``, ``history``
#: and ``trace_context`` are NULL in rows written before schema versions 3 and 5, which
#: reads as None like the text ``null``.
EXECUTION_JSON = frozenset({"input", "output", "trace_context"})
STEP_JSON = frozenset({"output", "compensation_data", "late", "history"})
