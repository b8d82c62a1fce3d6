"""The shop's tests run against real services: PostgreSQL, Redis and a Celery worker.

Everything the shop reads from its environment is set here, before Django starts:
a PostgreSQL database of this run (created and migrated first, dropped at the end),
the Redis broker and the saga store in Redis database 6 under key prefixes of this
run, and a queue of its own, so no other run or test session sees its messages or
its executions. The worker is a real ``celery -A django_shop worker`` process,
started once for the session.

A service that is down fails the run with CI=true and skips it elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

PROJECT = Path(__file__).resolve().parents[1]
TAG = uuid.uuid4().hex[:8]
REDIS_URL = os.environ.get("CELERY_SAGA_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("DJANGO_SHOP_TEST_REDIS_DB", "6"))
PREFIX = f"django-shop-{TAG}:"
#: The server of the project's PostgreSQL tests; this run makes a database of its own there.
SERVER_URL = os.environ.get(
    "CELERY_SAGA_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DB_NAME = f"django_shop_test_{TAG}"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}", query=""))


os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "django_shop.settings",
        "DJANGO_SHOP_DATABASE_URL": _with_database(SERVER_URL, DB_NAME),
        "CELERY_BROKER_URL": f"{REDIS_URL}/{REDIS_DB}",
        "DJANGO_SHOP_BROKER_KEY_PREFIX": f"{PREFIX}broker:",
        "DJANGO_SHOP_SAGA_BACKEND": f"{REDIS_URL}/{REDIS_DB}?prefix={PREFIX}store:",
        "DJANGO_SHOP_QUEUE": f"django-shop-{TAG}",
    }
)

import django  # noqa: E402  (after the environment it reads)

django.setup()


def _require(url: str, default_port: int, what: str) -> None:
    """Fail (CI) or skip (elsewhere) when the service at `url` does not answer."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        message = f"{what} is not reachable at {url}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: every service must be up)")
        pytest.skip(message)


def _admin(sql: str) -> None:
    """One statement on the server's maintenance database, outside any transaction."""
    import psycopg

    with psycopg.connect(_with_database(SERVER_URL, "postgres"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """This run's PostgreSQL database, migrated; dropped after the session."""
    _require(SERVER_URL, 5432, "PostgreSQL")
    from django.core.management import call_command
    from django.db import connections

    _admin(f'CREATE DATABASE "{DB_NAME}"')
    try:
        call_command("migrate", verbosity=0)
        yield DB_NAME
    finally:
        connections.close_all()
        _admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_keys() -> Iterator[str]:
    """The key prefix of this run in Redis database 6; its keys are deleted afterwards."""
    _require(REDIS_URL, 6379, "Redis")
    import redis

    yield PREFIX
    client = redis.Redis.from_url(f"{REDIS_URL}/{REDIS_DB}")
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


class Worker:
    """``celery -A django_shop worker`` in a process of its own, on this run's queue."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "django_shop", "worker", "-l", "info",
             "-c", "2", "-Q", os.environ["DJANGO_SHOP_QUEUE"], "-n", f"django-shop-{TAG}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=PROJECT, env=dict(os.environ), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker says it is ready; fails with its log if it exits or takes long."""
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the worker did not start:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def worker(redis_keys: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A running worker of the shop (session-wide); its log is shown if a test fails."""
    started = Worker(tmp_path_factory.mktemp("worker") / "worker.log")
    started.wait_ready()
    yield started
    started.stop()


@pytest.fixture
def published() -> Iterator[list[tuple[str, Any]]]:
    """Every task message this process sends during the test: (task name, routing key)."""
    from celery.signals import before_task_publish

    sent: list[tuple[str, Any]] = []

    def record(sender: str | None = None, routing_key: Any = None, **_: Any) -> None:
        sent.append((str(sender), routing_key))

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)
