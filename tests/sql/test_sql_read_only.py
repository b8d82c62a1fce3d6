"""A SQL store opened for reading creates nothing: no SQLite file, no tables.

`SQLSagaBackend.open_for_reading` (what ``celery saga list`` / ``show`` use) is the
store with ``create_tables=False``: at a mistyped URL it raises `StoreNotFound` (the
file, or `TablesNotFound` for the tables) instead of leaving an empty store behind,
and the CLI says so with exit code 3.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_saga.backends import backend_for_reading
from celery_saga.cli import EXIT_NOT_FOUND, EXIT_OK
from celery_saga.cli import saga as saga_cli
from celery_saga.errors import StoreNotFound
from celery_saga.testing import make_execution
from celery_saga_sql import SchemaNotUpgraded, SQLSagaBackend, TablesNotFound


def _cli(*args: str) -> Result:
    app = Celery("read-only", broker="memory://", set_as_current=False)
    return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=app))


def test_a_missing_sqlite_file_is_reported_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    store = backend_for_reading(f"sqlite:///{path}")
    assert isinstance(store, SQLSagaBackend) and store.create_tables is False
    with pytest.raises(StoreNotFound, match=r"the SQLite database '.*typo\.db' does not exist"):
        store.list()
    with pytest.raises(StoreNotFound):
        store.get(make_execution().saga_id)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    store.close()


def test_a_database_without_the_tables_is_reported_and_left_alone(
    database_url: str, table_prefix: str
) -> None:
    if database_url.startswith("sqlite:///"):  # a database file with other tables, or none
        sqlite3.connect(database_url.removeprefix("sqlite:///")).close()
    store = SQLSagaBackend.open_for_reading(database_url, table_prefix=table_prefix)
    with pytest.raises(TablesNotFound, match=f"tables with prefix {table_prefix!r} do not exist"):
        store.list()
    with pytest.raises(StoreNotFound) as info:
        store.list()
    assert isinstance(info.value, SchemaNotUpgraded)  # what 0.3 raised: still caught by that
    store.close()
    fresh = SQLSagaBackend.open_for_reading(database_url, table_prefix=table_prefix)
    with pytest.raises(TablesNotFound):  # still nothing there: the check created nothing
        fresh.get(make_execution().saga_id)
    fresh.close()


def test_a_store_opened_for_reading_reads_what_is_there(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    writer = make_store(database_url)
    execution = make_execution(name="order")
    writer.create(execution)
    reader = SQLSagaBackend.open_for_reading(database_url, table_prefix=writer.tables.prefix)
    try:
        found = reader.get(execution.saga_id)
        assert found is not None and found.saga_name == "order"
        assert [s.saga_id for s in reader.list().items] == [execution.saga_id]
    finally:
        reader.close()


def test_the_cli_reads_a_sqlite_store_named_after_the_subcommand(
    sqlite_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(sqlite_url)
    execution = make_execution(name="order")
    store.create(execution)
    url = f"{sqlite_url}?table_prefix={store.tables.prefix}"
    listed = _cli("list", "--backend", url)
    assert listed.exit_code == EXIT_OK, listed.output
    assert execution.saga_id in listed.stdout
    shown = _cli("show", execution.saga_id, "--backend", url)
    assert shown.exit_code == EXIT_OK, shown.output


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--backend", "{url}", "list"], id="before list"),
        pytest.param(["list", "--backend", "{url}"], id="after list"),
        pytest.param(["show", "3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d", "--backend", "{url}"]),
        pytest.param(["purge", "--older-than", "1d", "--yes", "--backend", "{url}"]),
        pytest.param(
            ["show", "3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d", "--follow", "--backend", "{url}"]
        ),
        pytest.param(["graph", "3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d", "--backend", "{url}"]),
        pytest.param(["stats", "--backend", "{url}"]),
    ],
)
def test_the_cli_never_creates_a_store_at_a_mistyped_url(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "typo.db"
    url = f"sqlite:///{path}"
    result = _cli(*[a.format(url=url) for a in args])
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr.startswith("error: no saga store at <SQLSagaBackend sqlite:///")
    assert "typo.db' does not exist: check the path in the URL" in result.stderr
    assert not path.exists()
