"""Store URLs: driver defaults, the table_prefix option, the registry's schemes."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_saga.backends import backend_class, backend_from_url, installed_schemes
from celery_saga_sql import SQLSagaBackend
from celery_saga_sql.urls import parse_store_url


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@db.example:5432/app", "postgresql+psycopg"),
        ("postgres://u@db.example/app", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db.example/app", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@db.example/app", "postgresql+psycopg2"),
        ("mysql://root@db.example:3306/app", "mysql+pymysql"),
        ("mysql+pymysql://root@db.example/app", "mysql+pymysql"),
        ("mariadb://root@db.example/app", "mariadb+pymysql"),
        ("sqlite:///relative/sagas.db", "sqlite"),
    ],
)
def test_driver_defaults(url: str, driver: str) -> None:
    parsed = parse_store_url(url)
    assert parsed.url.drivername == driver
    assert parsed.table_prefix is None
    assert parsed.create_tables is None


def test_mysql_gets_utf8mb4_unless_told_otherwise() -> None:
    assert parse_store_url("mysql://root@h/app").url.query["charset"] == "utf8mb4"
    assert parse_store_url("mysql://root@h/app?charset=utf8").url.query["charset"] == "utf8"


def test_store_options_are_taken_out_of_the_query() -> None:
    parsed = parse_store_url(
        "postgresql://u:secret@h/app?table_prefix=billing_&create_tables=false&sslmode=require"
    )
    assert parsed.table_prefix == "billing_"
    assert parsed.create_tables is False
    assert dict(parsed.url.query) == {"sslmode": "require"}
    assert "secret" not in parsed.redacted()


def test_table_prefix_from_url_reaches_the_store(tmp_path: Path) -> None:
    store = SQLSagaBackend.from_url(f"sqlite:///{tmp_path / 'a.db'}?table_prefix=billing_")
    try:
        assert store.tables.executions.name == "billing_executions"
        assert dict(store.engine.url.query) == {}
        assert store.engine.url.database == str(tmp_path / "a.db")
    finally:
        store.close()


def test_prefix_given_twice_must_agree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}?table_prefix=a_"
    SQLSagaBackend.from_url(url, table_prefix="a_").close()
    with pytest.raises(ValueError, match="given twice"):
        SQLSagaBackend.from_url(url, table_prefix="b_")


@pytest.mark.parametrize("prefix", ["", "Saga_", "1x_", "saga-", "x" * 33, "a;drop table"])
def test_bad_prefixes_are_refused(prefix: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="table_prefix"):
        SQLSagaBackend(f"sqlite:///{tmp_path / 'a.db'}", table_prefix=prefix)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "needs a file"),
        ("sqlite:///:memory:", "needs a file"),
        ("oracle://u@h/db", "cannot serve"),
        ("not a url", "not a database URL"),
        ("sqlite:///x.db?create_tables=maybe", "true or false"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_store_url(url)


def test_nothing_connects_before_first_use() -> None:
    # No server listens on port 9: building the store must still work.
    store = SQLSagaBackend.from_url("postgresql://nobody@127.0.0.1:9/none")
    assert repr(store).startswith("<SQLSagaBackend postgresql+psycopg://nobody@127.0.0.1:9/none")
    store.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "mysql", "mariadb", "sqlite"])
def test_entry_points_serve_every_scheme(scheme: str) -> None:
    assert installed_schemes()[scheme] == "celery_saga_sql:SQLSagaBackend"
    assert backend_class(scheme) is SQLSagaBackend
    assert backend_class(f"{scheme}+somedriver") is SQLSagaBackend


def test_registry_builds_a_store_from_a_url(tmp_path: Path) -> None:
    store = backend_from_url(f"sqlite:///{tmp_path / 'a.db'}?table_prefix=reg_")
    try:
        assert isinstance(store, SQLSagaBackend)
        assert store.tables.prefix == "reg_"
    finally:
        store.close()
