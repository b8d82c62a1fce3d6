"""Shared fixtures: real services on localhost, isolated per test.

A test that needs a service it cannot reach fails when CI=true and is skipped
(with the reason) elsewhere. Every test gets its own Redis key prefix and its
own queue names, so runs never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support import REDIS_URL, STORE_DB, drop_prefix, require

from celery_saga import registry

# The project's own pytest plugin, as users enable it (docs/testing.md).
pytest_plugins = ("celery_saga.contrib.pytest",)


@pytest.fixture
def unique() -> str:
    """A short id unique to this test, for prefixes and queue names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def redis_server() -> str:
    """The base URL of the Redis server, after checking it is up."""
    require(REDIS_URL, 6379, "Redis")
    return REDIS_URL


@pytest.fixture
def redis_store_url(redis_server: str, unique: str) -> Iterator[str]:
    """A Redis store URL with a key prefix of its own, cleaned up afterwards."""
    prefix = f"t-{unique}:"
    yield f"{redis_server}/{STORE_DB}?prefix={prefix}"
    drop_prefix(redis_server, STORE_DB, prefix)


@pytest.fixture(autouse=True)
def _forget_test_sagas() -> Iterator[None]:
    """Sagas a test defines are unregistered after it (module-level ones stay)."""
    before = set(registry.registered())
    yield
    for name in set(registry.registered()) - before:
        registry.unregister(name)
