"""The SQL store meets the SagaBackend contract on PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_saga.backends import SagaBackend
from celery_saga.testing import BackendConformance, Requirements
from celery_saga_sql import SQLSagaBackend


class _Notifies(Requirements):
    @property
    def notifies_completion(self) -> bool:
        return True


class TestPostgreSQLConformance(BackendConformance):
    requirements = _Notifies()

    @pytest.fixture
    def backend(self, postgres_url: str, make_store: Callable[..., SQLSagaBackend]) -> SagaBackend:
        return make_store(postgres_url)


class TestMariaDBConformance(BackendConformance):
    @pytest.fixture
    def backend(self, mysql_url: str, make_store: Callable[..., SQLSagaBackend]) -> SagaBackend:
        return make_store(mysql_url)


class TestSQLiteConformance(BackendConformance):
    @pytest.fixture
    def backend(self, sqlite_url: str, make_store: Callable[..., SQLSagaBackend]) -> SagaBackend:
        return make_store(sqlite_url)
