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
    assert (result.before, result.after, result.applied) == (0, 2, (1, 2))
    assert migrations.current_version(store.engine, table_prefix) == migrations.LATEST == 2
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
    assert (again.before, again.after, again.applied) == (2, 2, ())
    assert _shape(store.engine, table_prefix) == before
    assert store.get(execution.saga_id) is not None


def test_concurrent_upgrades_apply_each_migration_once(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stores = [make_store(database_url, create_tables=False) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        results = list(pool.map(lambda s: migrations.upgrade(s.engine, table_prefix), stores))
    assert sorted(r.applied for r in results) == [()] * 5 + [(1, 2)]
    assert all(r.after == 2 for r in results)


def test_newer_schema_is_refused_with_both_versions_named(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url)
    store.upgrade_schema()
    _set_version(store, 99)
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*up to 2") as caught:
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
    assert "schema version after: 2" in first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "schema version before: 2" in second.output
    assert "applied" not in second.output
    assert "schema version after: 2" in second.output
    shown = runner.invoke(cli, ["version", database_url, "--table-prefix", table_prefix])
    assert "schema version: 2" in shown.output
    _set_version(store, 7)
    refused = runner.invoke(cli, args)
    assert refused.exit_code != 0
    assert "schema version 7" in refused.output
    assert "up to 2" in refused.output


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
    assert "schema version after: 2" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "celery_saga_sql", "upgrade", "sqlite://"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode != 0
    assert "needs a file" in bad.stderr


# -- version 1 -> 2: deadline_at and cancelled_at ------------------------------------------------

V2_COLUMNS = {"deadline_at", "cancelled_at"}


def _make_version_1(engine: Engine, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables at schema version 1: what a celery-saga-sql knowing only migration 1 made."""
    with monkeypatch.context() as only_v1:
        only_v1.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        only_v1.setattr(migrations, "LATEST", 1)
        result = migrations.upgrade(engine, prefix)
    assert (result.before, result.after, result.applied) == (0, 1, (1,))
    assert migrations.current_version(engine, prefix) == 1
    assert not V2_COLUMNS & _execution_columns(engine, prefix)


def _execution_columns(engine: Engine, prefix: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(f"{prefix}executions")}


#: An execution as a version 1 writer stored it: no deadline_at or cancelled_at columns.
V1_CREATED = 1_700_000_000.123456
V1_INPUT = {"order_id": "A-1", "amount": 10, "big": 2**62 + 1}


def _write_v1_row(store: SQLSagaBackend) -> str:
    """Insert one execution and one step in the version 1 shape (column by column)."""
    saga_id = str(uuid.uuid4())
    tables = store.tables
    with store.engine.begin() as conn:
        conn.execute(
            insert(tables.executions).values(
                saga_id=saga_id,
                saga_name="v1-order",
                status="running",
                idempotency_key="v1-key",
                definition_hash="0123456789abcdef",
                queue="sagas",
                input=json.dumps(V1_INPUT),
                output="null",
                error=None,
                failed_step=None,
                created_at=V1_CREATED,
                updated_at=V1_CREATED + 1,
                finished_at=None,
                schema=1,
            )
        )
        conn.execute(
            insert(tables.steps).values(
                saga_id=saga_id,
                idx=0,
                task_name="tasks.charge",
                stage=0,
                compensation_task_name="tasks.refund",
                no_compensation=False,
                status="success",
                attempt=1,
                task_id="task-0",
                retries=0,
                seq=1,
                started_at=V1_CREATED,
                finished_at=V1_CREATED + 0.5,
                output='{"charged":10}',
                compensation_data='{"charge_id":"c-1"}',
                error=None,
                comp_attempt=0,
                comp_task_id=None,
                comp_started_at=None,
                comp_finished_at=None,
                comp_error=None,
            )
        )
    return saga_id


def _check_v1_row(store: SQLSagaBackend, saga_id: str) -> None:
    """The version 1 row reads back whole, with the new fields None."""
    got = store.get(saga_id)
    assert got is not None
    assert (got.saga_name, got.status, got.idempotency_key) == (
        "v1-order",
        SagaStatus.RUNNING,
        "v1-key",
    )
    assert (got.definition_hash, got.queue, got.input, got.output) == (
        "0123456789abcdef",
        "sagas",
        V1_INPUT,
        None,
    )
    assert (got.created_at, got.updated_at, got.finished_at) == (
        V1_CREATED,
        V1_CREATED + 1,
        None,
    )
    assert got.deadline_at is None
    assert got.cancelled_at is None
    assert [s.index for s in got.steps] == [0]
    step = got.step(0)
    assert (step.status, step.attempt, step.seq, step.task_id) == (
        StepStatus.SUCCESS,
        1,
        1,
        "task-0",
    )
    assert (step.output, step.compensation_data) == ({"charged": 10}, {"charge_id": "c-1"})
    found = store.find_by_idempotency_key("v1-key")
    assert found is not None
    assert found.to_dict() == got.to_dict()


def _normalized(shape: dict[str, Any], prefix: str) -> str:
    return json.dumps(shape, sort_keys=True).replace(prefix, "<prefix>")


def test_version_1_tables_are_upgraded_to_2_by_the_command_keeping_their_rows(
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(database_url, create_tables=False)
    _make_version_1(store.engine, table_prefix, monkeypatch)
    saga_id = _write_v1_row(store)

    result = CliRunner().invoke(cli, ["upgrade", database_url, "--table-prefix", table_prefix])
    assert result.exit_code == 0, result.output
    assert "schema version before: 1" in result.output
    assert "applied 1:" not in result.output
    assert "applied 2: add the deadline_at and cancelled_at columns" in result.output
    assert "schema version after: 2" in result.output
    assert migrations.current_version(store.engine, table_prefix) == 2
    assert _execution_columns(store.engine, table_prefix) >= V2_COLUMNS

    _check_v1_row(store, saga_id)
    assert [s.saga_id for s in store.list(status=SagaStatus.RUNNING).items] == [saga_id]
    # The old row takes the new fields like any other.
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
        None,
    )
    assert store.delete(saga_id)

    # Upgraded tables are the tables a fresh database gets, name for name and type for type.
    fresh_prefix = f"f{table_prefix[1:]}"
    fresh = make_store(database_url, table_prefix=fresh_prefix)
    assert fresh.upgrade_schema().applied == (1, 2)
    assert _normalized(_shape(fresh.engine, fresh_prefix), fresh_prefix) == _normalized(
        _shape(store.engine, table_prefix), table_prefix
    )


def test_upgrade_from_version_1_by_the_module_command(
    tmp_path: Path, make_store: Callable[..., SQLSagaBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    store = make_store(url, table_prefix="cli_", create_tables=False)
    _make_version_1(store.engine, "cli_", monkeypatch)
    saga_id = _write_v1_row(store)
    done = subprocess.run(
        [sys.executable, "-m", "celery_saga_sql", "upgrade", f"{url}?table_prefix=cli_"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "schema version before: 1" in done.stdout
    assert "applied 2:" in done.stdout
    assert "schema version after: 2" in done.stdout
    _check_v1_row(store, saga_id)


def test_without_create_tables_version_1_tables_are_refused_with_the_command_to_run(
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(database_url, create_tables=False)
    _make_version_1(store.engine, table_prefix, monkeypatch)
    saga_id = _write_v1_row(store)
    operations: list[Callable[[], object]] = [
        lambda: store.get(saga_id),
        lambda: store.create(make_execution()),
        lambda: store.list(),
        lambda: store.update_saga(saga_id, {"status": SagaStatus.CANCELLED}),
        lambda: store.update_step(saga_id, 0, {"error": "x"}),
        lambda: store.delete(saga_id),
        lambda: store.purge(time.time()),
        lambda: store.wait(saga_id, timeout=0.1),
    ]
    for operation in operations:
        with pytest.raises(SchemaNotUpgraded) as caught:
            operation()
        message = str(caught.value)
        assert f"prefix {table_prefix!r} are at schema version 1" in message
        assert "needs version 2" in message
        assert f"python -m celery_saga_sql upgrade <url> --table-prefix {table_prefix}" in message
    # Nothing was changed: still version 1, same columns, the row as written.
    assert migrations.current_version(store.engine, table_prefix) == 1
    assert not V2_COLUMNS & _execution_columns(store.engine, table_prefix)

    # Once the operator has upgraded, the same store works (the check is made again).
    migrations.upgrade(store.engine, table_prefix)
    _check_v1_row(store, saga_id)


def test_a_store_with_create_tables_upgrades_version_1_tables_itself(
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = make_store(database_url, create_tables=False)
    _make_version_1(first.engine, table_prefix, monkeypatch)
    saga_id = _write_v1_row(first)
    store = make_store(database_url)  # create_tables=True: upgraded on first use
    _check_v1_row(store, saga_id)
    assert migrations.current_version(store.engine, table_prefix) == 2


def test_an_interrupted_version_2_upgrade_can_be_run_again(
    database_url: str,
    make_store: Callable[..., SQLSagaBackend],
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MySQL commits each ALTER: an upgrade stopped after one column must finish later."""
    store = make_store(database_url, create_tables=False)
    _make_version_1(store.engine, table_prefix, monkeypatch)
    saga_id = _write_v1_row(store)
    with store.engine.begin() as conn:
        conn.execute(
            text(f"ALTER TABLE {table_prefix}executions ADD COLUMN deadline_at DOUBLE PRECISION")
        )
    assert migrations.current_version(store.engine, table_prefix) == 1
    result = migrations.upgrade(store.engine, table_prefix)
    assert (result.before, result.after, result.applied) == (1, 2, (2,))
    assert _execution_columns(store.engine, table_prefix) >= V2_COLUMNS
    _check_v1_row(store, saga_id)
