"""Store URLs: driver defaults, store options in the query string, validation.

A store URL is a SQLAlchemy URL plus options of the store itself. The store's
options (``table_prefix``, ``create_tables``) are taken out of the query string
before the URL reaches SQLAlchemy, which would otherwise hand them to the driver.
Schemes without a driver get the one this package is tested with: psycopg 3 for
PostgreSQL, PyMySQL for MySQL and MariaDB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from celery_saga.backends.urls import parse_flag

#: Query parameters that configure the store; every other one goes to the driver.
URL_OPTIONS = ("table_prefix", "create_tables")
DEFAULT_TABLE_PREFIX = "saga_"

#: Backend name in the URL -> (SQLAlchemy backend name, default driver).
_BACKENDS: dict[str, tuple[str, str | None]] = {
    "postgresql": ("postgresql", "psycopg"),
    "postgres": ("postgresql", "psycopg"),
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mariadb", "pymysql"),
    "sqlite": ("sqlite", None),
}
_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: what SQLAlchemy connects to, and the store's own options."""

    url: URL
    table_prefix: str | None
    create_tables: bool | None

    @property
    def backend(self) -> str:
        """``postgresql``, ``mysql``, ``mariadb`` or ``sqlite``."""
        return self.url.get_backend_name()

    def redacted(self) -> str:
        """The URL with its password hidden, for messages and ``repr``."""
        return self.url.render_as_string(hide_password=True)


def validate_table_prefix(prefix: str) -> str:
    """Table prefixes become parts of identifiers: lowercase letters, digits and ``_``.

    Lowercase only, so the same prefix names the same tables on every database
    (PostgreSQL folds unquoted names, MySQL may be case sensitive on disk), and
    short enough that the longest index name stays within PostgreSQL's 63 bytes.
    """
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError(
            f"table_prefix must be 1-32 characters: a lowercase letter, then lowercase "
            f"letters, digits or '_' (such as 'saga_'), got {prefix!r}"
        )
    return prefix


def parse_store_url(url: str | URL) -> StoreURL:
    """Split a store URL into the SQLAlchemy URL and the store options.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``;
    ``mysql://`` and ``mariadb://`` use PyMySQL with the ``utf8mb4`` character set.
    An explicit driver (``postgresql+psycopg2://``) is kept. In-memory SQLite is
    refused: every pooled connection would see a different, empty database.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError; keep the message clear
        raise ValueError(f"not a database URL: {url!r} ({exc})") from None
    backend, _, driver = parsed.drivername.partition("+")
    known = _BACKENDS.get(backend.lower())
    if known is None:
        raise ValueError(
            f"celery-saga-sql cannot serve the URL scheme {parsed.drivername!r}: use "
            "postgresql://, mysql://, mariadb:// or sqlite:///path/to/file.db"
        )
    name, default_driver = known
    driver = driver or default_driver or ""
    query = dict(parsed.query)
    options: dict[str, str] = {}
    for key in URL_OPTIONS:
        if key in query:
            value = query.pop(key)
            options[key] = value if isinstance(value, str) else value[-1]
    if name in ("mysql", "mariadb") and driver == "pymysql":
        query.setdefault("charset", "utf8mb4")
    if name == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError(
            "sqlite needs a file: use sqlite:///relative/path.db or sqlite:////absolute/path.db "
            "(an in-memory SQLite database is private to one connection; use memory:// "
            "for a store that lives in this process)"
        )
    clean = parsed.set(drivername=f"{name}+{driver}" if driver else name, query=query)
    prefix = options.get("table_prefix")
    create = options.get("create_tables")
    return StoreURL(
        url=clean,
        table_prefix=None if prefix is None else validate_table_prefix(prefix),
        create_tables=parse_flag("create_tables", create),
    )
