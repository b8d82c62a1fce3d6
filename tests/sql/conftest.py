"""Fixtures for the SQL store: real PostgreSQL, MariaDB/MySQL and SQLite files.

Every test gets its own table prefix and its tables are dropped afterwards, so
runs (and tests running side by side) never see each other's rows. A server
that cannot be reached fails the test when CI=true and skips it elsewhere,
through `require` from the root conftest.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from celery_saga_sql import SQLSagaBackend
from celery_saga_sql.schema import build_tables
from celery_saga_sql.urls import parse_store_url

POSTGRES_URL = os.environ.get(
    "CELERY_SAGA_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("CELERY_SAGA_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
DATABASES = ("postgresql", "mariadb", "sqlite")


def _require(config: pytest.Config, url: str, port: int, what: str) -> None:
    """`require` from tests/conftest.py (fail under CI=true, skip elsewhere)."""
    root = config.pluginmanager.get_plugin(str(Path(__file__).resolve().parents[1] / "conftest.py"))
    assert root is not None, "tests/conftest.py was not loaded as a conftest plugin"
    root.require(url, port, what)


def drop_tables(url: str, prefix: str) -> None:
    """Drop the store tables with `prefix` (all four, if they exist)."""
    engine = create_engine(parse_store_url(url).url)
    try:
        build_tables(prefix).metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture
def table_prefix() -> str:
    """A table prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL test database, after checking the server is up."""
    _require(request.config, POSTGRES_URL, 5432, "PostgreSQL")
    return POSTGRES_URL


@pytest.fixture
def mysql_url(request: pytest.FixtureRequest) -> str:
    """The MariaDB/MySQL test database, after checking the server is up."""
    _require(request.config, MYSQL_URL, 3306, "MariaDB/MySQL")
    return MYSQL_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file of this test's own."""
    return f"sqlite:///{tmp_path / 'sagas.db'}"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """Each of the three databases in turn (tests that run everywhere)."""
    fixture = {"postgresql": "postgres_url", "mariadb": "mysql_url", "sqlite": "sqlite_url"}
    return str(request.getfixturevalue(fixture[request.param]))


@pytest.fixture
def make_store(table_prefix: str) -> Iterator[Callable[..., SQLSagaBackend]]:
    """Build stores on this test's tables; close them and drop the tables afterwards."""
    made: list[SQLSagaBackend] = []
    to_drop: set[tuple[str, str]] = set()

    def make(url: str, **options: Any) -> SQLSagaBackend:
        options.setdefault("table_prefix", table_prefix)
        store = SQLSagaBackend.from_url(url, **options)
        made.append(store)
        to_drop.add((url, store.tables.prefix))
        return store

    yield make
    for store in made:
        store.close()
    for url, prefix in to_drop:
        drop_tables(url, prefix)
