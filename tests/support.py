"""Helpers shared by the test tree: service URLs, reachability, key cleanup."""

from __future__ import annotations

import os
import socket
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
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port),
                                      timeout=2):
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


