"""The versioned schema: create, upgrade, refuse a newer one; the upgrade command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect, update

from celery_saga.errors import SchemaVersionError
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


def test_fresh_database_goes_to_version_1(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url, create_tables=False)
    assert migrations.current_version(store.engine, table_prefix) == 0
    result = migrations.upgrade(store.engine, table_prefix)
    assert (result.before, result.after, result.applied) == (0, 1, (1,))
    assert migrations.current_version(store.engine, table_prefix) == migrations.LATEST == 1
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
    assert (again.before, again.after, again.applied) == (1, 1, ())
    assert _shape(store.engine, table_prefix) == before
    assert store.get(execution.saga_id) is not None


def test_concurrent_upgrades_apply_each_migration_once(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stores = [make_store(database_url, create_tables=False) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        results = list(pool.map(lambda s: migrations.upgrade(s.engine, table_prefix), stores))
    assert sorted(r.applied for r in results) == [()] * 5 + [(1,)]
    assert all(r.after == 1 for r in results)


def test_newer_schema_is_refused_with_both_versions_named(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    store = make_store(database_url)
    store.upgrade_schema()
    _set_version(store, 99)
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*up to 1") as caught:
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
    assert "schema version after: 1" in first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "schema version before: 1" in second.output
    assert "applied" not in second.output
    assert "schema version after: 1" in second.output
    shown = runner.invoke(cli, ["version", database_url, "--table-prefix", table_prefix])
    assert "schema version: 1" in shown.output
    _set_version(store, 7)
    refused = runner.invoke(cli, args)
    assert refused.exit_code != 0
    assert "schema version 7" in refused.output
    assert "up to 1" in refused.output


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
    assert "schema version after: 1" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "celery_saga_sql", "upgrade", "sqlite://"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode != 0
    assert "needs a file" in bad.stderr
