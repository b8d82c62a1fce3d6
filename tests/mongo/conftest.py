"""Fixtures for the MongoDB store: a real server on a real socket, isolated per test.

``CELERY_SAGA_MONGO_URL`` names a real ``mongod`` (or replica set) to test against.
Without it, a SecantusDB server (from PyPI: a single-node server speaking the
MongoDB wire protocol, on WiredTiger) is started once per session on a free
loopback port, with its data in a temporary directory. When the server cannot
be started or reached the tests fail if CI=true and are skipped elsewhere, with
the reason. Each test gets its own collection prefix, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MONGO_URL = os.environ.get("CELERY_SAGA_MONGO_URL", "").strip()
#: Database the tests use (each test has its own collection prefix in it).
TEST_DATABASE = os.environ.get("CELERY_SAGA_TEST_MONGO_DB", "celery_saga_test")


def unavailable(message: str) -> None:
    """Fail (CI) or skip (elsewhere) because the MongoDB server is not there."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: every service must be up)")
    pytest.skip(f"{message}; set CELERY_SAGA_MONGO_URL or install SecantusDB to run this test")


def with_database(base_url: str, database: str, **options: str) -> str:
    """`base_url` with its path set to `database` and `options` added to its query."""
    scheme, _, rest = base_url.partition("://")
    location, _, query = rest.partition("?")
    hosts = location.split("/", 1)[0]
    pieces = [p for p in query.split("&") if p] + [f"{k}={v}" for k, v in options.items()]
    url = f"{scheme}://{hosts}/{database}"
    return f"{url}?{'&'.join(pieces)}" if pieces else url


def start_secantus(storage_path: str, **kwargs: Any) -> Any:
    """Start a SecantusDB server on a free loopback port (port=0: the OS picks it).

    ``SecantusDBServer.start()`` binds and listens before it returns, so the
    server is ready for connections as soon as this returns; ``stop()`` closes
    the connections and the WiredTiger files.
    """
    try:
        from secantus import SecantusDBServer
    except ImportError as exc:
        unavailable(f"SecantusDB is not installed ({exc})")
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=storage_path, **kwargs)
    try:
        server.start()
    except Exception as exc:
        unavailable(f"SecantusDB could not be started: {exc!r}")
    return server


def ping(url: str) -> None:
    """Fail or skip unless a MongoDB server answers at `url`."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=3000)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        reason = str(exc).split(" (configured timeouts", 1)[0][:300]
        unavailable(f"MongoDB is not reachable at {url}: {reason}")
    finally:
        client.close()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of the server the tests use (a real mongod, or SecantusDB)."""
    if MONGO_URL:
        ping(MONGO_URL)
        yield MONGO_URL
        return
    server = start_secantus(str(tmp_path_factory.mktemp("secantus")))
    try:
        ping(server.uri)
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def using_secantus() -> bool:
    """True when the tests run against the SecantusDB started here."""
    return not MONGO_URL


@pytest.fixture
def mongo_prefix(unique: str) -> str:
    """A collection prefix of this test's own."""
    return f"t_{unique}_"


@pytest.fixture
def mongo_store_url(mongo_server: str, mongo_prefix: str) -> Iterator[str]:
    """A store URL with a collection prefix of its own; the collection is dropped after."""
    yield with_database(mongo_server, TEST_DATABASE, collection_prefix=mongo_prefix)
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongo_server)
    try:
        client[TEST_DATABASE].drop_collection(f"{mongo_prefix}executions")
    finally:
        client.close()


@pytest.fixture
def mongo_store(mongo_store_url: str) -> Iterator[Any]:
    """A fresh `MongoSagaBackend` on this test's own collection."""
    from celery_saga_mongo import MongoSagaBackend

    store = MongoSagaBackend.from_url(mongo_store_url)
    yield store
    store.close()


@pytest.fixture
def make_store(mongo_store_url: str) -> Iterator[Callable[..., Any]]:
    """Build more stores on this test's collection (with options); closed after the test."""
    from celery_saga_mongo import MongoSagaBackend

    made: list[MongoSagaBackend] = []

    def make(**options: Any) -> MongoSagaBackend:
        store = MongoSagaBackend.from_url(mongo_store_url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture(scope="session")
def standalone_secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SecantusDB that advertises no replica set: no change streams, like a lone mongod."""
    server = start_secantus(str(tmp_path_factory.mktemp("standalone")), replica_set_name=None)
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def standalone_store_url(standalone_secantus: str, mongo_prefix: str) -> str:
    """A store URL on the standalone SecantusDB, with this test's collection prefix."""
    return with_database(standalone_secantus, TEST_DATABASE, collection_prefix=mongo_prefix)
