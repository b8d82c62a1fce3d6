"""W8: how many bytes a store keeps per finished saga, measured from the outside.

A `Sizer` reads the size of what one contender's store holds, before a run (its
`baseline`) and after N finished sagas were kept (its `measure`); W8 divides the
difference by N. Each figure is named; the first one a sizer returns is the one
W8 reports first (its "primary" figure):

- Redis (this project's store): ``memory``, the sum of ``MEMORY USAGE <key> SAMPLES 0``
  over every key under the store's prefix (records and indexes alike).
- Redis result backend (the plain chain): ``memory``, the same sum over the
  ``celery-task-meta-<id>`` keys of every step of the run's chains.
- PostgreSQL (this project's tables, or DBOS's system tables): ``compacted``, the
  sum of ``pg_total_relation_size`` (table, TOAST and indexes) after ``VACUUM FULL``;
  ``as_written``, the same sum before it (with the dead row versions that updates
  leave until a vacuum).
- MariaDB/MySQL: the same two, from ``data_length + index_length`` after
  ``ANALYZE TABLE``, compacted by ``OPTIMIZE TABLE``.
- SQLite: ``compacted``, the file's pages after ``VACUUM``; ``as_written``, the
  pages in use (not on the free list) before it.
- MongoDB: ``data`` and ``indexes`` from ``collStats`` when the server has it; else
  ``bson``, the BSON size of the collections' documents.

Every baseline first compacts what earlier runs deleted, so only this run's rows
count.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import Any, Protocol

import redis

#: Keys asked about per pipeline round trip.
BATCH = 500


class Sizer(Protocol):
    """Measures one contender's store: named figures, in bytes."""

    def baseline(self) -> dict[str, int]:
        """Compact what earlier runs deleted; the sizes before a run."""
        ...

    def measure(self, ids: list[str]) -> dict[str, int]:
        """The sizes after a run that kept `ids` (first: the primary figure)."""
        ...


def _memory_usage(client: redis.Redis, keys: Iterable[bytes | str]) -> int:
    """The sum of ``MEMORY USAGE key SAMPLES 0`` (exact for aggregates) over `keys`."""
    total = 0
    batch = list(keys)
    for i in range(0, len(batch), BATCH):
        pipe = client.pipeline(transaction=False)
        for key in batch[i : i + BATCH]:
            pipe.memory_usage(key, samples=0)
        total += sum(int(n or 0) for n in pipe.execute())
    return total


class RedisPrefix:
    """This project's Redis store: every key under its prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def _size(self) -> dict[str, int]:
        keys = self.client.scan_iter(match=f"{self.prefix}*", count=1000)
        return {"memory": _memory_usage(self.client, keys)}

    def baseline(self) -> dict[str, int]:
        """What the prefix holds before the run (nothing to compact in Redis)."""
        return self._size()

    def measure(self, ids: list[str]) -> dict[str, int]:
        """What the prefix holds after the run."""
        return self._size()


class ResultKeys:
    """A Redis result backend: the result keys of the run's tasks."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def baseline(self) -> dict[str, int]:
        """Nothing: only the run's own keys are measured."""
        return {"memory": 0}

    def measure(self, ids: list[str]) -> dict[str, int]:
        """The memory of ``celery-task-meta-<id>`` for every task id of the run."""
        return {"memory": _memory_usage(self.client, (f"celery-task-meta-{t}" for t in ids))}


class PostgresTables:
    """PostgreSQL tables of one schema whose names start with a prefix ("" for all)."""

    def __init__(self, url: Any, prefix: str = "", schema: str | None = None) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.prefix, self.schema = prefix, schema

    def _tables(self, conn: Any) -> list[str]:
        from sqlalchemy import text

        rows = conn.execute(
            text(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname = coalesce(:schema, current_schema()) "
                "AND left(tablename, length(:prefix)) = :prefix"
            ),
            {"schema": self.schema, "prefix": self.prefix},
        )
        return [str(row[0]) for row in rows]

    def _total(self, conn: Any, tables: list[str]) -> int:
        from sqlalchemy import text

        return sum(
            int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar() or 0)
            for t in tables
        )

    def _compact(self, conn: Any, tables: list[str]) -> None:
        from sqlalchemy import text

        for table in tables:
            conn.execute(text(f"VACUUM FULL {table}"))

    def baseline(self) -> dict[str, int]:
        """``VACUUM FULL`` (what earlier runs deleted goes), then the size."""
        with self.engine.connect() as conn:
            tables = self._tables(conn)
            self._compact(conn, tables)
            size = self._total(conn, tables)
        return {"compacted": size, "as_written": size}

    def measure(self, ids: list[str]) -> dict[str, int]:
        """The size as written, then after ``VACUUM FULL``."""
        with self.engine.connect() as conn:
            tables = self._tables(conn)
            written = self._total(conn, tables)
            self._compact(conn, tables)
            return {"compacted": self._total(conn, tables), "as_written": written}


class MysqlTables:
    """MariaDB/MySQL tables of the connection's database whose names start with a prefix."""

    def __init__(self, url: Any, prefix: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.prefix = prefix

    def _tables(self, conn: Any) -> list[str]:
        from sqlalchemy import text

        rows = conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND LEFT(table_name, CHAR_LENGTH(:p)) = :p"
            ),
            {"p": self.prefix},
        )
        return [str(row[0]) for row in rows]

    def _total(self, conn: Any, tables: list[str]) -> int:
        from sqlalchemy import text

        for table in tables:
            conn.execute(text(f"ANALYZE TABLE `{table}`")).all()
        total = 0
        for table in tables:
            total += int(
                conn.execute(
                    text(
                        "SELECT data_length + index_length FROM information_schema.tables "
                        "WHERE table_schema = DATABASE() AND table_name = :t"
                    ),
                    {"t": table},
                ).scalar()
                or 0
            )
        return total

    def _compact(self, conn: Any, tables: list[str]) -> None:
        from sqlalchemy import text

        for table in tables:
            conn.execute(text(f"OPTIMIZE TABLE `{table}`")).all()

    def baseline(self) -> dict[str, int]:
        """``OPTIMIZE TABLE`` (a rebuild, for InnoDB), then the size."""
        with self.engine.connect() as conn:
            tables = self._tables(conn)
            self._compact(conn, tables)
            size = self._total(conn, tables)
        return {"compacted": size, "as_written": size}

    def measure(self, ids: list[str]) -> dict[str, int]:
        """The size as written, then after ``OPTIMIZE TABLE``."""
        with self.engine.connect() as conn:
            tables = self._tables(conn)
            written = self._total(conn, tables)
            self._compact(conn, tables)
            return {"compacted": self._total(conn, tables), "as_written": written}


class SqliteFile:
    """A SQLite database file (the store's own: it holds nothing else)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _pages(self, conn: sqlite3.Connection, pragma: str) -> int:
        return int(conn.execute(f"PRAGMA {pragma}").fetchone()[0])

    def _sizes(self, vacuum_after: bool) -> dict[str, int]:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            page = self._pages(conn, "page_size")
            used = self._pages(conn, "page_count") - self._pages(conn, "freelist_count")
            if vacuum_after:
                conn.execute("VACUUM")
            return {"compacted": self._pages(conn, "page_count") * page, "as_written": used * page}
        finally:
            conn.close()

    def baseline(self) -> dict[str, int]:
        """``VACUUM`` (deleted rows' pages go), then the size."""
        if not os.path.exists(self.path):
            return {"compacted": 0, "as_written": 0}
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            conn.execute("VACUUM")
        finally:
            conn.close()
        size = self._sizes(vacuum_after=False)["compacted"]
        return {"compacted": size, "as_written": size}

    def measure(self, ids: list[str]) -> dict[str, int]:
        """The pages in use as written, then the file's pages after ``VACUUM``."""
        return self._sizes(vacuum_after=True)


class MongoCollections:
    """MongoDB collections of one database whose names start with a prefix."""

    def __init__(self, url: str) -> None:
        from pymongo import MongoClient

        base, _, query = url.partition("?")
        self.client: Any = MongoClient(base.rsplit("/", 1)[0] + "/")
        self.db = self.client[base.rsplit("/", 1)[1]]
        self.prefix = query.split("collection_prefix=", 1)[1].split("&", 1)[0]
        self.stats: bool | None = None  # does the server answer collStats?

    def _sizes(self) -> dict[str, int]:
        names = [n for n in self.db.list_collection_names() if n.startswith(self.prefix)]
        if self.stats is not False:
            try:
                stats = [self.db.command("collStats", name) for name in names]
                self.stats = True
                return {
                    "data": sum(int(s.get("size", 0)) for s in stats),
                    "indexes": sum(int(s.get("totalIndexSize", 0)) for s in stats),
                }
            except Exception:  # not every server speaking the protocol has collStats
                self.stats = False
        import bson

        total = sum(len(bson.encode(doc)) for name in names for doc in self.db[name].find())
        return {"bson": total}

    def baseline(self) -> dict[str, int]:
        """The size before the run."""
        return self._sizes()

    def measure(self, ids: list[str]) -> dict[str, int]:
        """The size after the run."""
        return self._sizes()


def sizer_for(kind: str, url: str) -> Sizer:
    """The sizer of this project's `kind` store at `url`."""
    if kind == "redis":
        base, _, query = url.partition("?")
        return RedisPrefix(base, query.split("prefix=", 1)[1].split("&", 1)[0])
    if kind in ("postgresql", "mysql", "sqlite"):
        from celery_saga_sql.urls import parse_store_url

        parsed = parse_store_url(url)
        if kind == "sqlite":
            return SqliteFile(str(parsed.url.database))
        prefix = parsed.table_prefix or "saga_"
        if kind == "postgresql":
            return PostgresTables(parsed.url, prefix)
        return MysqlTables(parsed.url, prefix)
    if kind == "mongodb":
        return MongoCollections(url)
    raise ValueError(f"no sizer for {kind!r}")
