"""The SQL store meets the SagaBackend contract on PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_saga.backends import SagaBackend
from celery_saga.testing import BackendConformance, Requirements
from celery_saga_sql import SQLSagaBackend


class _OneStatementRenewal(Requirements):
    """`renew_leases` is one statement (up to `SQLSagaBackend.renew_batch` leases).

    On MySQL/MariaDB too: UPDATE has no RETURNING there, but the rows it matched tell
    whether every lease was renewed; only a heartbeat that lost a lease reads which.
    """

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        return True


class _PostgreSQL(_OneStatementRenewal):
    @property
    def notifies_completion(self) -> bool:
        return True

    @property
    def finishes_in_one_round_trip(self) -> bool:
        return True

    @property
    def notifies_completion_async(self) -> bool:
        return True


class TestPostgreSQLConformance(BackendConformance):
    requirements = _PostgreSQL()

    @pytest.fixture
    def backend(self, postgres_url: str, make_store: Callable[..., SQLSagaBackend]) -> SagaBackend:
        return make_store(postgres_url)


class TestMariaDBConformance(BackendConformance):
    requirements = _OneStatementRenewal()

    @pytest.fixture
    def backend(self, mysql_url: str, make_store: Callable[..., SQLSagaBackend]) -> SagaBackend:
        return make_store(mysql_url)


class TestSQLiteConformance(BackendConformance):
    requirements = _OneStatementRenewal()

    @pytest.fixture
    def backend(self, sqlite_url: str, make_store: Callable[..., SQLSagaBackend]) -> SagaBackend:
        return make_store(sqlite_url)
