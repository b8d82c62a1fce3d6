"""The hot statements run on the driver's connection, compiled once.

A step write runs the same few statement shapes millions of times. SQLAlchemy's
per-execution work (execution context, result set-up) costs as much client CPU as
the driver itself on that path, so each shape is compiled to its SQL text once and
run with the driver's own cursor on the pooled connection (psycopg prepares it on
the server after a few runs). Errors come out as SQLAlchemy's `DBAPIError`, with a
connection the driver reports as lost invalidated, as SQLAlchemy would have done:
the store's retry rules see no difference.

On MySQL and MariaDB (PyMySQL), a `Batch` sends the statements a step write decided
on, and the COMMIT, in one exchange: the driver interpolates the parameters on the
client anyway, and the connections of the store's write engine allow several
statements per exchange (`celery_saga_sql.engines`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement


class Row:
    """One result row, its columns as attributes (like SQLAlchemy's `Row`)."""

    __slots__ = ("__dict__",)

    def __init__(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self.__dict__.update(zip(names, values, strict=True))

    def __getattr__(self, name: str) -> Any:  # only for names the row lacks
        raise AttributeError(f"the row has no column {name!r}")

    @property
    def _mapping(self) -> dict[str, Any]:
        """The row as a mapping of column name to value (like SQLAlchemy's `Row`)."""
        return self.__dict__


class Compiled:
    """A statement compiled once for `engine`'s dialect: its SQL text and the values of
    the parameters the statement itself fixes (literals)."""

    __slots__ = ("defaults", "dialect", "names", "sql")

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=engine.dialect))
        if compiled.positional:  # the store's dialects with a direct path are named-style
            raise ValueError(f"{engine.dialect.name}: a positional paramstyle is not supported")
        self.sql = compiled.string
        self.dialect = engine.dialect
        self.defaults = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if bind.value is not None and not bind.required
        }
        #: The result's column names, read off the first run's cursor (the same SQL text
        #: always has the same columns; building them from the cursor costs every run).
        self.names: tuple[str, ...] | None = None

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters of one run: `params` and the statement's own literals."""
        return {**self.defaults, **params}

    def one_or_none(self, conn: Connection, params: Mapping[str, Any]) -> Row | None:
        """Run on `conn`'s driver connection; the first row, or None."""
        found: Row | None = self._run(conn, params, fetch=self._first)
        return found

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Row]:
        """Run on `conn`'s driver connection; every row."""
        rows: list[Row] = self._run(conn, params, fetch=self._rows)
        return rows

    def _names(self, cursor: Any) -> tuple[str, ...]:
        names = self.names
        if names is None:
            names = self.names = tuple(d[0] for d in cursor.description or ())
        return names

    def _first(self, cursor: Any) -> Row | None:
        found = cursor.fetchone()
        if found is None:
            return None
        return Row(self._names(cursor), tuple(_text(v) for v in found))

    def _rows(self, cursor: Any) -> list[Row]:
        names = self._names(cursor)
        return [Row(names, tuple(_text(v) for v in found)) for found in cursor.fetchall()]

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run on `conn`'s driver connection a statement that returns no rows."""
        self._run(conn, params, fetch=None)

    def _run(self, conn: Connection, params: Mapping[str, Any], *, fetch: Any) -> Any:
        values = {**self.defaults, **params}
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None  # a checked-out connection always has one
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(self.sql, values)
            return None if fetch is None else fetch(cursor)
        except self.dialect.loaded_dbapi.Error as exc:
            lost = self.dialect.is_disconnect(exc, dbapi_conn, cursor)
            if lost:
                conn.invalidate(exc)
            raise _wrapped(self.dialect, self.sql, values, exc, lost) from exc
        finally:
            cursor.close()


def _wrapped(dialect: Any, sql: str, values: Any, exc: Exception, lost: bool) -> Exception:
    """The driver's error as SQLAlchemy would have raised it."""
    return DBAPIError.instance(
        sql, values, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
    )


def _text(value: Any) -> Any:
    # The store's only binary columns hold UTF-8 text (`schema.ExactString` on MySQL).
    return bytes(value).decode() if isinstance(value, bytes | bytearray) else value


def _rows(cursor: Any) -> list[Row]:
    names = tuple(d[0] for d in cursor.description or ())
    return [Row(names, tuple(_text(v) for v in found)) for found in cursor.fetchall()]


class Batch:
    """One write transaction on a driver connection of `engine`'s pool (PyMySQL), whose
    last exchange carries the writes and the COMMIT together.

    Counts its exchanges and bytes; `close` returns the connection (rolled back first
    if the transaction did not end, invalidated if the driver lost it).
    """

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect
        self.conn = engine.raw_connection()
        self.trips = 0
        self.written = 0
        self._open = False
        flags = getattr(self.conn.driver_connection, "client_flag", 0)
        if not flags & _MULTI_STATEMENTS:  # the write engine always sets it (`engines`)
            self.conn.close()
            raise ValueError("a Batch needs a connection with CLIENT.MULTI_STATEMENTS")

    def query(self, statement: Compiled, params: Mapping[str, Any]) -> list[Row]:
        """Run one statement (one exchange; the first starts the transaction): its rows."""
        rows: list[Row] = self._exchange(statement.sql, statement.values(params), _rows)
        return rows

    def commit_with(
        self, statements: Sequence[tuple[Compiled, Mapping[str, Any]]], *, written: int = 0
    ) -> None:
        """Run `statements` and COMMIT in one exchange."""
        self.written += written
        cursor = self.conn.cursor()
        try:
            parts = [cursor.mogrify(c.sql, c.values(p)) for c, p in statements]
        finally:
            cursor.close()
        parts.append("COMMIT")
        self._exchange("; ".join(parts), None, None, sets=len(parts))
        self._open = False

    def end(self, *, commit: bool) -> None:
        """End the transaction (one exchange) without writing anything more."""
        self._exchange("COMMIT" if commit else "ROLLBACK", None, None)
        self._open = False

    def _exchange(self, sql: str, values: Any, read: Any, *, sets: int = 1) -> Any:
        self.trips += 1
        self._open = True
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, values)
            found = read(cursor) if read is not None else None
            for _ in range(sets - 1):  # every result of a multi-statement exchange is read
                cursor.nextset()
            return found
        except self.dialect.loaded_dbapi.Error as exc:
            lost = self.dialect.is_disconnect(exc, self.conn.driver_connection, cursor)
            if lost:
                self.conn.invalidate(exc)
                self._open = False
            raise _wrapped(self.dialect, sql, values, exc, lost) from exc
        finally:
            cursor.close()

    def close(self) -> None:
        """Return the connection to the pool (after a ROLLBACK if a transaction is open)."""
        try:
            if self._open and self.conn.is_valid:
                self.trips += 1
                self.conn.rollback()
        finally:
            self.conn.close()


#: PyMySQL's CLIENT.MULTI_STATEMENTS flag (the same bit in the MySQL protocol).
_MULTI_STATEMENTS = 1 << 16
