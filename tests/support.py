"""Helpers shared by the test tree: service URLs, reachability, key cleanup."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("CELERY_SAGA_REDIS_URL", "redis://127.0.0.1:6379")
RABBITMQ_URL = os.environ.get("CELERY_SAGA_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Redis database numbers used by the tests (state stores / brokers).
STORE_DB = int(os.environ.get("CELERY_SAGA_TEST_STORE_DB", "12"))
BROKER_DB = int(os.environ.get("CELERY_SAGA_TEST_BROKER_DB", "13"))


def reachable(url: str, default_port: int) -> bool:
    """True if a TCP connection to the URL's host and port succeeds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


def require(url: str, default_port: int, what: str) -> None:
    """Fail (CI) or skip (elsewhere) when the service is not reachable."""
    if reachable(url, default_port):
        return
    message = f"{what} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: every service must be up)")
    pytest.skip(f"{message}; start it to run this test")


def drop_prefix(url: str, db: int, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(f"{url}/{db}")
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


#: The state stores the end-to-end suite runs on (nox sets this per matrix cell).
STORES = [
    s.strip()
    for s in os.environ.get("CELERY_SAGA_TEST_STORES", "memory,redis").split(",")
    if s.strip()
]
#: Stores that worker processes can share (all but memory).
SHARED_STORES = [s for s in STORES if s != "memory"]

POSTGRES_URL = os.environ.get(
    "CELERY_SAGA_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("CELERY_SAGA_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
MONGO_URL = os.environ.get("CELERY_SAGA_MONGO_URL", "").strip()


def sql_drop_tables(url: str, prefix: str) -> None:
    """Drop the SQL store tables with `prefix`."""
    from sqlalchemy import create_engine

    from celery_saga_sql.schema import build_tables
    from celery_saga_sql.urls import parse_store_url

    engine = create_engine(parse_store_url(url).url)
    try:
        build_tables(prefix).metadata.drop_all(engine)
    finally:
        engine.dispose()


_secantus: list[Any] = []


def mongo_base_url() -> str:
    """A real mongod from CELERY_SAGA_MONGO_URL, else a SecantusDB server started once."""
    if MONGO_URL:
        return MONGO_URL
    if not _secantus:
        import atexit
        import tempfile

        try:
            from secantus import SecantusDBServer
        except ImportError as exc:
            if IN_CI:
                pytest.fail(f"SecantusDB is not installed ({exc}) (CI=true)")
            pytest.skip(f"SecantusDB is not installed ({exc})")
        server = SecantusDBServer(
            host="127.0.0.1", port=0, storage_path=tempfile.mkdtemp(prefix="secantus-")
        )
        server.start()
        atexit.register(server.stop)
        _secantus.append(server)
    return str(_secantus[0].uri)


@contextmanager
def state_store(kind: str, tag: str, tmp_dir: str) -> Iterator[Any]:
    """A fresh state store (instance or URL) of `kind`, removed afterwards."""
    if kind == "memory":
        from celery_saga.backends import MemorySagaBackend

        yield MemorySagaBackend()
    elif kind == "redis":
        require(REDIS_URL, 6379, "Redis")
        prefix = f"e2e-{tag}:"
        try:
            yield f"{REDIS_URL}/{STORE_DB}?prefix={prefix}"
        finally:
            drop_prefix(REDIS_URL, STORE_DB, prefix)
    elif kind in ("postgresql", "mysql", "sqlite"):
        base = {
            "postgresql": POSTGRES_URL,
            "mysql": MYSQL_URL,
            "sqlite": f"sqlite:///{tmp_dir}/e2e-{tag}.db",
        }[kind]
        if kind != "sqlite":
            require(base, 5432 if kind == "postgresql" else 3306, kind)
        prefix = f"e{tag}_"
        url = f"{base}?table_prefix={prefix}"
        try:
            yield url
        finally:
            sql_drop_tables(url, prefix)
    elif kind == "mongo":
        base = mongo_base_url().rstrip("/")
        prefix = f"e{tag}_"
        scheme, _, rest = base.partition("://")
        hosts = rest.split("/", 1)[0].split("?", 1)[0]
        url = f"{scheme}://{hosts}/celery_saga_e2e?collection_prefix={prefix}"
        try:
            yield url
        finally:
            from pymongo import MongoClient

            client: Any = MongoClient(f"{scheme}://{hosts}/")
            client["celery_saga_e2e"].drop_collection(f"{prefix}executions")
            client.close()
    else:
        raise ValueError(f"no test store for {kind!r}")
