"""The versioned schema: create, upgrade, refuse a newer one; the upgrade command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert, inspect, text, update
from sqlalchemy.schema import CreateColumn

from celery_saga.backends import Lease
from celery_saga.errors import SchemaVersionError
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing import make_execution
from celery_saga_sql import SchemaNotUpgraded, SQLSagaBackend, migrations
from celery_saga_sql.__main__ import cli


def _shape(engine: Engine, prefix: str) -> dict[str, Any]:
    """Tables, columns and indexes with `prefix`, to compare before and after."""
    found = inspect(engine)
    shape: dict[str, Any] = {}
    for table in sorted(t for t in found.get_table_names() if t.startswith(prefix)):
        shape[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)
            ],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"])) for i in found.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table)),
        }
    return shape


def _set_version(store: SQLSagaBackend, version: int) -> None:
    table = store.tables.schema_version
    with store.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == 1).values(version=version))


def test_fresh_database_goes_through_every_version(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url, create_tables=False)
    assert migrations.current_version(store.engine, table_prefix) == 0
    result = migrations.upgrade(store.engine, table_prefix)
    assert (result.before, result.after, result.applied) == (0, 6, (1, 2, 3, 4, 5, 6))
    assert migrations.current_version(store.engine, table_prefix) == migrations.LATEST == 6
    assert set(_shape(store.engine, table_prefix)) == {
        f"{table_prefix}{name}" for name in ("executions", "steps", "counters", "schema_version")
    }
    execution = make_execution()
    store.create(execution)
    assert store.get(execution.saga_id) is not None


def test_upgrading_twice_changes_nothing(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url)
    execution = make_execution()
    store.create(execution)  # first use creates the tables
    before = _shape(store.engine, table_prefix)
    again = migrations.upgrade(store.engine, table_prefix)
    assert (again.before, again.after, again.applied) == (6, 6, ())
    assert _shape(store.engine, table_prefix) == before
    assert store.get(execution.saga_id) is not None


def test_concurrent_upgrades_apply_each_migration_once(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stores = [make_store(database_url, create_tables=False) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        results = list(pool.map(lambda s: migrations.upgrade(s.engine, table_prefix), stores))
    assert sorted(r.applied for r in results) == [()] * 5 + [(1, 2, 3, 4, 5, 6)]
    assert all(r.after == 6 for r in results)


def test_newer_schema_is_refused_with_both_versions_named(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url)
    store.upgrade_schema()
    _set_version(store, 99)
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*up to 6") as caught:
        migrations.upgrade(store.engine, table_prefix)
    assert "upgrade celery-saga-sql" in str(caught.value)
    assert migrations.current_version(store.engine, table_prefix) == 99  # left untouched
    fresh = make_store(database_url)  # create_tables=True upgrades on first use: refused
    with pytest.raises(SchemaVersionError, match="99"):
        fresh.get(make_execution().saga_id)
    checking = make_store(database_url, create_tables=False)
    with pytest.raises(SchemaVersionError, match="99"):
        checking.list()


def test_without_create_tables_missing_tables_say_how_to_create_them(
    sqlite_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(sqlite_url, create_tables=False)
    with pytest.raises(SchemaNotUpgraded, match="python -m celery_saga_sql upgrade"):
        store.create(make_execution())
    result = CliRunner().invoke(cli, ["upgrade", sqlite_url, "--table-prefix", store.tables.prefix])
    assert result.exit_code == 0, result.output
    execution = make_execution()
    assert store.create(execution)[1]


def test_upgrade_command_prints_versions_before_and_after(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url, create_tables=False)  # for cleanup and checks
    runner = CliRunner()
    args = ["upgrade", database_url, "--table-prefix", table_prefix]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "schema version before: 0" in first.output
    assert "applied 1:" in first.output
    assert "applied 2:" in first.output
    assert "applied 3:" in first.output
    assert "applied 4:" in first.output
    assert "applied 5:" in first.output
    assert "applied 6:" in first.output
    assert "schema version after: 6" in first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "schema version before: 6" in second.output
    assert "applied" not in second.output
    assert "schema version after: 6" in second.output
    shown = runner.invoke(cli, ["version", database_url, "--table-prefix", table_prefix])
    assert "schema version: 6" in shown.output
    _set_version(store, 7)
    refused = runner.invoke(cli, args)
    assert refused.exit_code != 0
    assert "schema version 7" in refused.output
    assert "up to 6" in refused.output


def test_upgrade_command_runs_as_a_module(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}?table_prefix=cli_"
    env = dict(os.environ, PYTHONWARNINGS="error::DeprecationWarning:celery_saga_sql")
    done = subprocess.run(
        [sys.executable, "-m", "celery_saga_sql", "upgrade", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "table prefix: 'cli_'" in done.stdout
    assert "schema version before: 0" in done.stdout
    assert "schema version after: 6" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "celery_saga_sql", "upgrade", "sqlite://"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode != 0
    assert "needs a file" in bad.stderr


# -- older tables: version 1 (before deadline_at and cancelled_at), version 2 (before leases),
# -- version 3 (before composition: parent links, step kinds, revert reasons) and version 4
# -- (before workers, attempt history and trace contexts) ------------------------------------

#: The columns each version adds, by table (in the order it adds them).
ADDED: dict[int, tuple[tuple[str, tuple[str, ...]], ...]] = {
    2: (("executions", ("deadline_at", "cancelled_at")),),
    3: (("steps", migrations.V3_STEP_COLUMNS),),
    4: (
        ("executions", migrations.V4_EXECUTION_COLUMNS),
        ("steps", migrations.V4_STEP_COLUMNS),
    ),
    5: (
        ("executions", migrations.V5_EXECUTION_COLUMNS),
        ("steps", migrations.V5_STEP_COLUMNS),
    ),
}
OLD_VERSIONS = (1, 2, 3, 4, 5)
LATEST = 6


def _columns(engine: Engine, prefix: str, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(f"{prefix}{table}")}


def _make_version(
    engine: Engine, prefix: str, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """Tables at schema `version`: what a celery-saga-sql knowing only that far made."""
    with monkeypatch.context() as older:
        older.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:version])
        older.setattr(migrations, "LATEST", version)
        result = migrations.upgrade(engine, prefix)
    assert (result.before, result.after, result.applied) == (
        0,
        version,
        tuple(range(1, version + 1)),
    )
    assert migrations.current_version(engine, prefix) == version
    _assert_columns_up_to(engine, prefix, version)


def _assert_columns_up_to(engine: Engine, prefix: str, version: int) -> None:
    """The tables have the columns of `version` and none of a later one."""
    for added, tables in ADDED.items():
        for table, names in tables:
            present = _columns(engine, prefix, table)
            if added <= version:
                assert set(names) <= present, (added, present)
            else:
                assert not set(names) & present, (added, present)
    parent_index = f"{prefix}ix_executions_parent_created"
    updated_index = migrations.V6_DROPPED_INDEX.format(prefix=prefix)
    indexes = {i["name"] for i in inspect(engine).get_indexes(f"{prefix}executions")}
    assert (parent_index in indexes) is (version >= 4), indexes
    assert (updated_index in indexes) is (version < 6), indexes


#: An execution as an older writer stored it, column by column.
OLD_CREATED = 1_700_000_000.123456
OLD_INPUT = {"order_id": "A-1", "amount": 10, "big": 2**62 + 1}
OLD_DEADLINE = OLD_CREATED + 3600.5  # written by version 2 writers only


def _write_old_row(store: SQLSagaBackend, version: int) -> str:
    """Insert one execution with two steps (0 finished, 1 running) in the shape of `version`."""
    saga_id = str(uuid.uuid4())
    tables = store.tables
    execution: dict[str, Any] = {
        "saga_id": saga_id,
        "saga_name": "old-order",
        "status": "running",
        "idempotency_key": "old-key",
        "definition_hash": "0123456789abcdef",
        "queue": "sagas",
        "input": json.dumps(OLD_INPUT),
        "output": "null",
        "error": None,
        "failed_step": None,
        "created_at": OLD_CREATED,
        "updated_at": OLD_CREATED + 1,
        "finished_at": None,
        "schema": 1,
    }
    if version >= 2:
        execution.update(deadline_at=OLD_DEADLINE, cancelled_at=None)
    step: dict[str, Any] = {
        "saga_id": saga_id,
        "task_name": "tasks.charge",
        "stage": 0,
        "compensation_task_name": "tasks.refund",
        "no_compensation": False,
        "task_id": "task-0",
        "retries": 0,
        "started_at": OLD_CREATED,
        "error": None,
        "comp_attempt": 0,
        "comp_task_id": None,
        "comp_started_at": None,
        "comp_finished_at": None,
        "comp_error": None,
    }
    finished = {
        "idx": 0,
        "status": "success",
        "attempt": 1,
        "seq": 1,
        "finished_at": OLD_CREATED + 0.5,
        "output": '{"charged":10}',
        "compensation_data": '{"charge_id":"c-1"}',
    }
    running = {
        "idx": 1,
        "status": "running",
        "attempt": 2,
        "seq": None,
        "finished_at": None,
        "output": "null",
        "compensation_data": "null",
    }
    with store.engine.begin() as conn:
        conn.execute(insert(tables.executions).values(execution))
        conn.execute(insert(tables.steps), [step | finished, step | running])
    return saga_id


def _check_old_row(store: SQLSagaBackend, saga_id: str, version: int) -> None:
    """The old row reads back whole, with the fields added after `version` at their defaults."""
    got = store.get(saga_id)
    assert got is not None
    assert (got.saga_name, got.status, got.idempotency_key) == (
        "old-order",
        SagaStatus.RUNNING,
        "old-key",
    )
    assert (got.definition_hash, got.queue, got.input, got.output) == (
        "0123456789abcdef",
        "sagas",
        OLD_INPUT,
        None,
    )
    assert (got.created_at, got.updated_at, got.finished_at) == (
        OLD_CREATED,
        OLD_CREATED + 1,
        None,
    )
    assert got.deadline_at == (OLD_DEADLINE if version >= 2 else None)
    assert got.cancelled_at is None
    assert [s.index for s in got.steps] == [0, 1]
    step = got.step(0)
    assert (step.status, step.attempt, step.seq, step.task_id) == (
        StepStatus.SUCCESS,
        1,
        1,
        "task-0",
    )
    assert (step.output, step.compensation_data) == ({"charged": 10}, {"charge_id": "c-1"})
    assert (got.step(1).status, got.step(1).attempt) == (StepStatus.RUNNING, 2)
    for step in got.steps:  # the version 3 fields, as a step that never had them
        assert (step.lease_owner, step.lease_expires_at, step.sent_at) == (None, None, None)
        assert (step.sends, step.late) == (0, None)
    # The version 4 fields: a top-level execution of task steps, never reverted.
    assert (got.parent_id, got.parent_step, got.revert_reason) == (None, None, None)
    assert [(s.kind, s.child_id) for s in got.steps] == [("task", None)] * 2
    # The version 5 fields: nobody recorded who ran the steps, no history, no trace.
    assert [(s.worker, s.comp_worker, s.history) for s in got.steps] == [(None, None, None)] * 2
    assert got.trace_context is None
    found = store.find_by_idempotency_key("old-key")
    assert found is not None
    assert found.to_dict() == got.to_dict()


def _normalized(shape: dict[str, Any], prefix: str) -> str:
    return json.dumps(shape, sort_keys=True).replace(prefix, "<prefix>")


@pytest.mark.parametrize("old", OLD_VERSIONS)
def test_old_tables_are_upgraded_by_the_command_keeping_their_rows(
    old: int,
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(database_url, create_tables=False)
    _make_version(store.engine, table_prefix, monkeypatch, old)
    saga_id = _write_old_row(store, old)

    result = CliRunner().invoke(cli, ["upgrade", database_url, "--table-prefix", table_prefix])
    assert result.exit_code == 0, result.output
    assert f"schema version before: {old}" in result.output
    for version in range(1, old + 1):
        assert f"applied {version}:" not in result.output
    if old < 2:
        assert "applied 2: add the deadline_at and cancelled_at columns" in result.output
    if old < 3:
        assert (
            "applied 3: add the lease_owner, lease_expires_at, sent_at, sends and late columns"
            in result.output
        )
    if old < 4:
        assert (
            "applied 4: add the parent_id, parent_step and revert_reason columns and the "
            "parent_id index to the executions table, and the kind and child_id columns to the "
            "steps table" in result.output
        )
    if old < 5:
        assert (
            "applied 5: add the trace_context column to the executions table, and the worker, "
            "comp_worker and history columns to the steps table" in result.output
        )
    assert "applied 6: drop the updated_at index of the executions table" in result.output
    assert f"schema version after: {LATEST}" in result.output
    assert migrations.current_version(store.engine, table_prefix) == LATEST
    _assert_columns_up_to(store.engine, table_prefix, LATEST)

    _check_old_row(store, saga_id, old)
    assert [s.saga_id for s in store.list(status=SagaStatus.RUNNING).items] == [saga_id]
    # The old rows take the new fields like any other: leases and late successes...
    t = time.time()
    assert store.renew_leases([Lease(saga_id, 1, "host/1/t", 2)], t + 30) == []
    refused = store.take_over(saga_id, 1, {"attempt": 3, "lease_owner": None}, attempt=2, now=t)
    assert not refused.applied
    assert (refused.lease_owner, refused.lease_expires_at) == ("host/1/t", t + 30)
    assert store.update_step(saga_id, 1, {"sent_at": t, "sends": 1}).applied
    assert store.record_late(saga_id, 0, 1, {"state": "recorded", "output": {"n": 1}}).applied
    got = store.get(saga_id)
    assert got is not None
    running = got.step(1)
    assert (running.lease_owner, running.lease_expires_at, running.sent_at, running.sends) == (
        "host/1/t",
        t + 30,
        t,
        1,
    )
    assert got.step(0).late == {"1": {"state": "recorded", "output": {"n": 1}}}
    # ...composition: a child saga of an old step, its id on that step, a revert reason...
    child = make_execution(parent_id=saga_id, parent_step=1)
    child.steps[0].kind = "external"
    store.create(child)
    assert store.update_step(saga_id, 1, {"child_id": child.saga_id}).applied
    assert store.update_saga(saga_id, {"revert_reason": "returned"})
    assert [s.saga_id for s in store.list(parent_id=saga_id).items] == [child.saga_id]
    # ...who ran an attempt and the attempts that are over; a new execution's trace context...
    past = [{"part": "forward", "attempt": 1, "started_at": t, "finished_at": t + 0.5,
             "worker": "celery@old", "outcome": "retried", "error": "try again"}]  # fmt: skip
    assert store.update_step(
        saga_id, 0, {"worker": "celery@new", "comp_worker": "host/1", "history": past}
    ).applied
    traced = make_execution()
    traced.trace_context = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    store.create(traced)
    stored_traced = store.get(traced.saga_id)
    assert stored_traced is not None and stored_traced.trace_context == traced.trace_context
    got = store.get(saga_id)
    assert got is not None
    assert (got.step(1).child_id, got.step(1).kind, got.revert_reason) == (
        child.saga_id,
        "task",
        "returned",
    )
    assert (got.step(0).worker, got.step(0).comp_worker, got.step(0).history) == (
        "celery@new",
        "host/1",
        past,
    )
    stored_child = store.get(child.saga_id)
    assert stored_child is not None
    assert (stored_child.parent_id, stored_child.parent_step, stored_child.step(0).kind) == (
        saga_id,
        1,
        "external",
    )
    # ...and deadline_at and cancelled_at.
    cancelled = time.time()
    assert store.update_saga(
        saga_id,
        {"status": SagaStatus.CANCELLED, "cancelled_at": cancelled, "finished_at": cancelled},
        expect_status={SagaStatus.RUNNING},
    )
    got = store.get(saga_id)
    assert got is not None
    assert (got.status, got.cancelled_at, got.deadline_at) == (
        SagaStatus.CANCELLED,
        cancelled,
        OLD_DEADLINE if old >= 2 else None,
    )
    assert store.delete(saga_id)

    # Upgraded tables are the tables a fresh database gets, name for name and type for type.
    fresh_prefix = f"f{table_prefix[1:]}"
    fresh = make_store(database_url, table_prefix=fresh_prefix)
    assert fresh.upgrade_schema().applied == (1, 2, 3, 4, 5, 6)
    assert _normalized(_shape(fresh.engine, fresh_prefix), fresh_prefix) == _normalized(
        _shape(store.engine, table_prefix), table_prefix
    )


@pytest.mark.parametrize("old", OLD_VERSIONS)
def test_upgrade_from_an_old_version_by_the_module_command(
    old: int,
    tmp_path: Path,
    make_store: Callable[..., SQLSagaBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = make_store(url, table_prefix="cli_", create_tables=False)
    _make_version(store.engine, "cli_", monkeypatch, old)
    saga_id = _write_old_row(store, old)
    done = subprocess.run(
        [sys.executable, "-m", "celery_saga_sql", "upgrade", f"{url}?table_prefix=cli_"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"schema version before: {old}" in done.stdout
    assert ("applied 2:" in done.stdout) is (old < 2)
    assert ("applied 3:" in done.stdout) is (old < 3)
    assert ("applied 4:" in done.stdout) is (old < 4)
    assert ("applied 5:" in done.stdout) is (old < 5)
    assert "applied 6:" in done.stdout
    assert f"schema version after: {LATEST}" in done.stdout
    _check_old_row(store, saga_id, old)


@pytest.mark.parametrize("old", OLD_VERSIONS)
def test_without_create_tables_old_tables_are_refused_with_the_command_to_run(
    old: int,
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(database_url, create_tables=False)
    _make_version(store.engine, table_prefix, monkeypatch, old)
    saga_id = _write_old_row(store, old)
    operations: list[Callable[[], object]] = [
        lambda: store.get(saga_id),
        lambda: store.create(make_execution()),
        lambda: store.list(),
        lambda: store.update_saga(saga_id, {"status": SagaStatus.CANCELLED}),
        lambda: store.update_step(saga_id, 0, {"error": "x"}),
        lambda: store.renew_leases([Lease(saga_id, 1, "host/1/t", 2)], time.time() + 30),
        lambda: store.take_over(saga_id, 1, {"attempt": 3}, attempt=2, now=time.time()),
        lambda: store.record_late(saga_id, 0, 1, {"state": "recorded"}),
        lambda: store.delete(saga_id),
        lambda: store.purge(time.time()),
        lambda: store.wait(saga_id, timeout=0.1),
    ]
    for operation in operations:
        with pytest.raises(SchemaNotUpgraded) as caught:
            operation()
        message = str(caught.value)
        assert f"prefix {table_prefix!r} are at schema version {old}" in message
        assert f"needs version {LATEST}" in message
        assert f"python -m celery_saga_sql upgrade <url> --table-prefix {table_prefix}" in message
    # Nothing was changed: still the old version, same columns, the rows as written.
    assert migrations.current_version(store.engine, table_prefix) == old
    _assert_columns_up_to(store.engine, table_prefix, old)

    # Once the operator has upgraded, the same store works (the check is made again).
    migrations.upgrade(store.engine, table_prefix)
    _check_old_row(store, saga_id, old)


@pytest.mark.parametrize("old", OLD_VERSIONS)
def test_a_store_with_create_tables_upgrades_old_tables_itself(
    old: int,
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = make_store(database_url, create_tables=False)
    _make_version(first.engine, table_prefix, monkeypatch, old)
    saga_id = _write_old_row(first, old)
    store = make_store(database_url)  # create_tables=True: upgraded on first use
    _check_old_row(store, saga_id, old)
    assert migrations.current_version(store.engine, table_prefix) == LATEST


@pytest.mark.parametrize("stopped", ["after one column", "before the last column"])
@pytest.mark.parametrize("version", sorted(ADDED))
def test_an_interrupted_upgrade_can_be_run_again(
    version: int,
    stopped: str,
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MySQL commits each ALTER: an upgrade stopped after any statement must finish later."""
    store = make_store(database_url, create_tables=False)
    _make_version(store.engine, table_prefix, monkeypatch, version - 1)
    saga_id = _write_old_row(store, version - 1)
    columns = [
        store.tables.metadata.tables[f"{table_prefix}{table_name}"].c[name]
        for table_name, names in ADDED[version]
        for name in names
    ]
    done = columns[:1] if stopped == "after one column" else columns[:-1]
    with store.engine.begin() as conn:
        for column in done:
            spec = CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE {column.table.name} ADD COLUMN {spec}"))
        if version == 4 and stopped == "before the last column":  # and the index, made too
            index = f"{table_prefix}ix_executions_parent_created"
            next(i for i in store.tables.executions.indexes if i.name == index).create(conn)
    assert migrations.current_version(store.engine, table_prefix) == version - 1
    result = migrations.upgrade(store.engine, table_prefix)
    assert (result.before, result.after, result.applied) == (
        version - 1,
        LATEST,
        tuple(range(version, LATEST + 1)),
    )
    _assert_columns_up_to(store.engine, table_prefix, LATEST)
    _check_old_row(store, saga_id, version - 1)
