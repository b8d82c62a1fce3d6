"""`ExampleStore`: a `SagaBackend` on the standard library's `sqlite3`, nothing else.

URL: ``examplestore:///relative/path.db`` or ``examplestore:////absolute/path.db``
(the path is what follows the third slash, as in SQLAlchemy's ``sqlite://`` URLs),
with an optional ``?timeout=30`` (seconds to wait for the database's write lock).

Layout: one row per execution (the columns listing filters and sorts on, plus the
rest of the header as JSON text), one row per step (JSON text), one row per counter.
A step's ``kind`` and ``child_id`` live in its JSON like every other step field; a
child saga's ``parent_id`` also has a column of its own, indexed, for listing the
children of an execution (files made by version 0.1 of this store get the column
and the index when they are opened: `_upgrade`).
Every write is a single ``BEGIN IMMEDIATE`` transaction: SQLite takes the write lock
at BEGIN, so reading, checking and writing inside it is a compare-and-set that holds
across threads and processes. A step write touches that step's row and the
execution's ``updated_at``, never the other steps.

Leases need nothing of their own: the lease fields are step fields like any other,
`StepExpect.refusal` checks the lease conditions when it is given the stored owner
and expiry, and the base class's `renew_leases` and `take_over` are built on
`update_step`. Late successes (`record_late`) are one more compare-and-set on the
step's ``late`` field.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery_saga.backends import Page, SagaBackend, StepExpect, StepWrite
from celery_saga.backends.base import (
    check_limit,
    check_saga_changes,
    check_step_changes,
    decode_cursor,
    encode_cursor,
    normalize_status,
    payload_size,
    plain_value,
)
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    SagaSummary,
    StepStatus,
    now,
)

SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS executions (
    saga_id TEXT PRIMARY KEY,
    saga_name TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    header TEXT NOT NULL,
    parent_id TEXT
);
CREATE INDEX IF NOT EXISTS ix_executions_status ON executions (status, created_at, saga_id);
CREATE INDEX IF NOT EXISTS ix_executions_name ON executions (saga_name, created_at, saga_id);
CREATE INDEX IF NOT EXISTS ix_executions_created ON executions (created_at, saga_id);
CREATE TABLE IF NOT EXISTS steps (
    saga_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (saga_id, idx)
);
CREATE TABLE IF NOT EXISTS counters (
    saga_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (saga_id, name)
);
"""
#: Made after `_upgrade` has added ``parent_id`` to a file of version 0.1.
PARENT_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_executions_parent ON executions (parent_id, created_at, saga_id)"
)
_FINISHED = tuple(s.value for s in TERMINAL_STATUSES)
_IN_FINISHED = f"status IN ({', '.join('?' * len(_FINISHED))})"


def _dumps(value: Any) -> str:
    # ASCII-only JSON text: big integers, floats and unicode come back exact.
    return json.dumps(value, separators=(",", ":"))


def _report(
    applied: bool, step: dict[str, Any], saga_status: SagaStatus, count: int | None = None
) -> StepWrite:
    """What a step write reports: the step's state (after the write, if applied)."""
    return StepWrite(
        applied,
        StepStatus(step["status"]),
        step["attempt"],
        saga_status,
        count,
        step["comp_attempt"],
        lease_owner=step.get("lease_owner"),
        lease_expires_at=step.get("lease_expires_at"),
    )


def _header(row: sqlite3.Row) -> dict[str, Any]:
    """The execution's header; the columns a step write may change win over the JSON."""
    data: dict[str, Any] = json.loads(row["header"])
    data.update(status=row["status"], updated_at=row["updated_at"], finished_at=row["finished_at"])
    return data


class ExampleStore(SagaBackend):
    """Saga executions in one SQLite file, shared by every thread and process using it."""

    schemes = ("examplestore",)

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._upgrade(self._conn())

    @staticmethod
    def _upgrade(conn: sqlite3.Connection) -> None:
        """Create the tables, or bring a file of an older version of this store up to date.

        Version 0.1 had no ``parent_id`` column; its rows read back as top-level
        executions of task steps (the fields saga composition added take their defaults).
        """
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(executions)")}
            if "parent_id" not in columns:
                conn.execute("ALTER TABLE executions ADD COLUMN parent_id TEXT")
            conn.execute(PARENT_INDEX)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ExampleStore:
        parts = urlsplit(url)
        path = parts.path[1:]
        if parts.scheme.lower() not in cls.schemes or parts.netloc or not path:
            raise ValueError(
                f"{url!r} is not an example store URL: use 'examplestore:///relative.db' "
                "or 'examplestore:////absolute/path.db'"
            )
        query = dict(parse_qsl(parts.query))
        return cls(path, **{"timeout": float(query.get("timeout", 30.0)), **options})

    def __repr__(self) -> str:
        return f"<ExampleStore {self.path}>"

    # -- connections and transactions -----------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a forked child never reuses its parent's)."""
        if self._pid != os.getpid():
            self._pid, self._local, self._lock = os.getpid(), threading.local(), threading.Lock()
            self._connections = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE (holds the write lock) or a read snapshot."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- create and read -----------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        header = _dumps(execution.header_dict())
        steps = [(execution.saga_id, s.index, _dumps(s.to_dict())) for s in execution.steps]
        self.stats.add(1, payload_size(header, *(data for _, _, data in steps)))
        with self._tx() as conn:
            key = execution.idempotency_key
            existing = None if key is None else self._read(conn, "idempotency_key", key)
            if existing is not None:
                return existing, False
            try:
                conn.execute(
                    "INSERT INTO executions (saga_id, saga_name, status, idempotency_key,"
                    " created_at, updated_at, finished_at, header, parent_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        execution.saga_id,
                        execution.saga_name,
                        execution.status.value,
                        key,
                        execution.created_at,
                        execution.updated_at,
                        execution.finished_at,
                        header,
                        execution.parent_id,
                    ),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"saga id {execution.saga_id} already exists") from None
            conn.executemany("INSERT INTO steps VALUES (?, ?, ?)", steps)
        return execution, True

    def get(self, saga_id: str) -> SagaExecution | None:
        self.stats.add()
        with self._tx(write=False) as conn:
            return self._read(conn, "saga_id", saga_id)

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        self.stats.add()
        with self._tx(write=False) as conn:
            return self._read(conn, "idempotency_key", key)

    @staticmethod
    def _read(conn: sqlite3.Connection, column: str, value: str) -> SagaExecution | None:
        # `column` is one of our own column names, never user input.
        row = conn.execute(f"SELECT * FROM executions WHERE {column} = ?", (value,)).fetchone()
        if row is None:
            return None
        data = _header(row)
        steps = conn.execute("SELECT data FROM steps WHERE saga_id = ?", (row["saga_id"],))
        data["steps"] = [json.loads(step["data"]) for step in steps]
        return SagaExecution.from_dict(data)

    # -- compare-and-set -----------------------------------------------------------------
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        check_saga_changes(changes)
        plain = {name: plain_value(value) for name, value in changes.items()}
        self.stats.add(1, payload_size(*plain, *plain.values()))
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM executions WHERE saga_id = ?", (saga_id,)).fetchone()
            if row is None:
                return False
            if expect_status is not None and row["status"] not in {
                SagaStatus(s).value for s in expect_status
            }:
                return False
            header = {**_header(row), **plain, "updated_at": now()}
            conn.execute(
                "UPDATE executions SET status = ?, updated_at = ?, finished_at = ?, header = ?"
                " WHERE saga_id = ?",
                (
                    header["status"],
                    header["updated_at"],
                    header["finished_at"],
                    _dumps(header),
                    saga_id,
                ),
            )
        return True

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
        plain = {name: plain_value(value) for name, value in changes.items()}
        self.stats.add(1, payload_size(*plain, *plain.values()))
        with self._tx() as conn:
            row = conn.execute(
                "SELECT steps.data, executions.status FROM steps JOIN executions USING (saga_id)"
                " WHERE saga_id = ? AND idx = ?",
                (saga_id, index),
            ).fetchone()
            if row is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            step, saga_status = json.loads(row["data"]), SagaStatus(row["status"])
            # The contract's own check, on the stored state (the lease fields are absent
            # from steps stored before leases existed: .get() reads them as None).
            if expect is not None and expect.refusal(
                StepStatus(step["status"]),
                step["attempt"],
                step["comp_attempt"],
                saga_status,
                step.get("lease_owner"),
                step.get("lease_expires_at"),
            ):
                return _report(False, step, saga_status)
            step.update(plain)
            count = None
            if count_in is not None:
                conn.execute(
                    "INSERT INTO counters VALUES (?, ?, 1)"
                    " ON CONFLICT (saga_id, name) DO UPDATE SET value = value + 1",
                    (saga_id, count_in),
                )
                count = step["seq"] = conn.execute(
                    "SELECT value FROM counters WHERE saga_id = ? AND name = ?", (saga_id, count_in)
                ).fetchone()[0]
            conn.execute(
                "UPDATE steps SET data = ? WHERE saga_id = ? AND idx = ?",
                (_dumps(step), saga_id, index),
            )
            conn.execute("UPDATE executions SET updated_at = ? WHERE saga_id = ?", (now(), saga_id))
        return _report(True, step, saga_status, count)

    # -- late successes ---------------------------------------------------------------------
    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        plain = {name: plain_value(value) for name, value in changes.items()}
        self.stats.add(1, payload_size(plain))
        with self._tx() as conn:  # read, check and write under the write lock
            row = conn.execute(
                "SELECT steps.data, executions.status FROM steps JOIN executions USING (saga_id)"
                " WHERE saga_id = ? AND idx = ?",
                (saga_id, index),
            ).fetchone()
            if row is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            step, saga_status = json.loads(row["data"]), SagaStatus(row["status"])
            late = step.get("late") or {}
            entry = late.get(str(attempt))  # entries are keyed by the attempt as a string
            if expect_state is None:
                ok = entry is None  # create: the entry must not exist yet
            else:
                ok = entry is not None and entry.get("state") == expect_state
            if not ok:
                return _report(False, step, saga_status)
            late[str(attempt)] = {**(entry or {}), **plain}
            step["late"] = late
            conn.execute(
                "UPDATE steps SET data = ? WHERE saga_id = ? AND idx = ?",
                (_dumps(step), saga_id, index),
            )
            conn.execute("UPDATE executions SET updated_at = ? WHERE saga_id = ?", (now(), saga_id))
        return _report(True, step, saga_status)

    # -- listing and housekeeping ---------------------------------------------------------
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
        wanted = normalize_status(status)
        check_limit(limit)
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("parent_id = ?", parent_id),  # first: the index on (parent_id, created_at, ...)
            ("status = ?", None if wanted is None else wanted.value),
            ("saga_name = ?", name),
            ("created_at < ?", created_before),
            ("created_at > ?", created_after),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        if cursor:
            created_at, saga_id = decode_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND saga_id < ?))")
            args += [created_at, created_at, saga_id]
        sql = "SELECT * FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, saga_id DESC LIMIT ?"
        self.stats.add()
        with self._tx(write=False) as conn:
            rows = conn.execute(sql, (*args, limit + 1)).fetchall()
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["saga_id"])
        return Page([SagaSummary.from_dict(_header(row)) for row in page], next_cursor)

    def delete(self, saga_id: str) -> bool:
        self.stats.add()
        with self._tx() as conn:
            row = conn.execute(
                "SELECT status FROM executions WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            if row is None:
                return False
            if row["status"] not in _FINISHED:
                raise ValueError(
                    f"saga {saga_id} is {row['status']}: only finished executions can be "
                    "deleted (cancel it first, or wait for it to finish)"
                )
            self._drop(conn, [saga_id])
        return True

    def purge(self, finished_before: float) -> int:
        self.stats.add()
        with self._tx() as conn:
            doomed = [
                row["saga_id"]
                for row in conn.execute(
                    f"SELECT saga_id FROM executions WHERE {_IN_FINISHED}"
                    " AND COALESCE(finished_at, updated_at) < ?",
                    (*_FINISHED, finished_before),
                )
            ]
            self._drop(conn, doomed)
        return len(doomed)

    @staticmethod
    def _drop(conn: sqlite3.Connection, saga_ids: Sequence[str]) -> None:
        for table in ("steps", "counters", "executions"):
            conn.executemany(f"DELETE FROM {table} WHERE saga_id = ?", [(i,) for i in saga_ids])
