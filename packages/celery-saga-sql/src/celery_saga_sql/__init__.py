"""celery-saga-sql: the SQL state store for celery-saga.

PostgreSQL, MySQL/MariaDB and SQLite through SQLAlchemy 2 Core, served for the
URL schemes ``postgresql``, ``postgres``, ``mysql``, ``mariadb`` and ``sqlite``.
Create or upgrade the tables with ``python -m celery_saga_sql upgrade <url>``.
"""

from __future__ import annotations

from celery_saga_sql.backend import SQLSagaBackend
from celery_saga_sql.migrations import LATEST as SCHEMA_VERSION
from celery_saga_sql.migrations import SchemaNotUpgraded, TablesNotFound
from celery_saga_sql.version import __version__

__all__ = ["SCHEMA_VERSION", "SQLSagaBackend", "SchemaNotUpgraded", "TablesNotFound", "__version__"]
