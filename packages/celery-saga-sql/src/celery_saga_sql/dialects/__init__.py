"""One class per database: what differs between PostgreSQL, MySQL/MariaDB and SQLite.

`dialect_for` picks the class for a store URL's backend. Each class builds its
statements once per store (`SQLDialect.cached`) and says how a step write, a
creation, a saga update and a lease renewal go on its database.
"""

from __future__ import annotations

from sqlalchemy import Engine

from celery_saga_sql.dialects.base import SQLDialect
from celery_saga_sql.dialects.mysql import MySQLDialect
from celery_saga_sql.dialects.postgresql import PostgreSQLDialect
from celery_saga_sql.dialects.sqlite import SQLiteDialect
from celery_saga_sql.schema import Tables

__all__ = [
    "MySQLDialect",
    "PostgreSQLDialect",
    "SQLDialect",
    "SQLiteDialect",
    "dialect_for",
]

_CLASSES: tuple[type[SQLDialect], ...] = (PostgreSQLDialect, MySQLDialect, SQLiteDialect)


def dialect_for(backend: str, tables: Tables, engine: Engine) -> SQLDialect:
    """The dialect object for `backend` (a `StoreURL.backend`: postgresql, mysql...)."""
    for cls in _CLASSES:
        if backend in cls.backends:
            return cls(tables, engine)
    known = sorted(name for cls in _CLASSES for name in cls.backends)
    raise ValueError(f"no SQL dialect for {backend!r}: the store knows {', '.join(known)}")
