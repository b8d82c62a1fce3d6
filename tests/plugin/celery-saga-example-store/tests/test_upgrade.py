"""A file written by version 0.1 of the example store (before saga composition) still works.

Its executions table has no ``parent_id`` column and its records are of record schema
1 (no parent link, no revert reason, steps without kind or child id): opening it adds
the column and its index, and the old records read back with the defaults.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from celery_saga.backends import backend_from_url
from celery_saga.models import SagaStatus
from celery_saga.testing import make_execution

#: The tables as version 0.1 of the store made them.
OLD_SCHEMA = """
CREATE TABLE executions (
    saga_id TEXT PRIMARY KEY, saga_name TEXT NOT NULL, status TEXT NOT NULL,
    idempotency_key TEXT UNIQUE, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    finished_at REAL, header TEXT NOT NULL
);
CREATE INDEX ix_executions_status ON executions (status, created_at, saga_id);
CREATE INDEX ix_executions_name ON executions (saga_name, created_at, saga_id);
CREATE INDEX ix_executions_created ON executions (created_at, saga_id);
CREATE TABLE steps (
    saga_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (saga_id, idx)
);
CREATE TABLE counters (
    saga_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (saga_id, name)
);
"""
NEW_FIELDS = ("parent_id", "parent_step", "revert_reason")


def _write_old_file(path: Path) -> str:
    """A 0.1 file holding one running execution of record schema 1; its id."""
    execution = make_execution(created_at=time.time() - 60)
    header = {k: v for k, v in execution.header_dict().items() if k not in NEW_FIELDS}
    header["schema"] = 1
    conn = sqlite3.connect(path)
    try:
        conn.executescript(OLD_SCHEMA)
        with conn:
            conn.execute(
                "INSERT INTO executions VALUES (?, ?, ?, NULL, ?, ?, NULL, ?)",
                (
                    execution.saga_id,
                    execution.saga_name,
                    execution.status.value,
                    execution.created_at,
                    execution.updated_at,
                    json.dumps(header),
                ),
            )
            for step in execution.steps:
                data = {k: v for k, v in step.to_dict().items() if k not in ("kind", "child_id")}
                conn.execute(
                    "INSERT INTO steps VALUES (?, ?, ?)",
                    (execution.saga_id, step.index, json.dumps(data)),
                )
    finally:
        conn.close()
    return execution.saga_id


def test_an_old_file_is_upgraded_when_opened_and_its_records_read_with_defaults(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    saga_id = _write_old_file(path)
    store = backend_from_url(f"examplestore:///{path}")
    try:
        got = store.get(saga_id)
        assert got is not None
        assert (got.schema, got.parent_id, got.parent_step, got.revert_reason) == (
            1,
            None,
            None,
            None,
        )
        assert [(s.kind, s.child_id) for s in got.steps] == [("task", None)] * 3
        assert [s.saga_id for s in store.list().items] == [saga_id]

        child = make_execution(parent_id=saga_id, parent_step=1)
        store.create(child)
        assert store.update_step(saga_id, 1, {"child_id": child.saga_id}).applied
        assert store.update_saga(saga_id, {"status": SagaStatus.COMPLETED})
        assert store.update_saga(
            saga_id,
            {"status": SagaStatus.COMPENSATING, "revert_reason": "returned"},
            expect_status={SagaStatus.COMPLETED},
        )
        assert [s.saga_id for s in store.list(parent_id=saga_id).items] == [child.saga_id]
        got = store.get(saga_id)
        assert got is not None
        assert (got.revert_reason, got.step(1).child_id) == ("returned", child.saga_id)
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(executions)")}
    finally:
        conn.close()
    assert "ix_executions_parent" in indexes
    again = backend_from_url(f"examplestore:///{path}")  # opening again changes nothing
    try:
        assert again.get(child.saga_id) is not None
    finally:
        again.close()
