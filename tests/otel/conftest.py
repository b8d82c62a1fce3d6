"""Fixtures of the tracing tests: the SDK's in-memory exporter, the instrumentation, and
an app whose sagas run on a real in-process worker (Redis broker; memory or Redis store).

Each test gets its own tracer provider and exporter, passed to `instrument()`; the
worker (threads) starts inside the test, after the instrumentation is on, so it runs
the receivers connected then.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from kombu.asynchronous import set_event_loop
from otel_support import Sagas, build, require_sdk
from support import REDIS_URL, STORES, require, state_store

#: The stores these tests run on: memory (one process) and Redis, where under test.
OTEL_STORES = [s for s in ("memory", "redis") if s in STORES] or ["memory"]


@dataclass
class Tracing:
    """A tracer provider whose finished spans land in an in-memory exporter."""

    provider: Any
    exporter: Any

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def tracer(self) -> Any:
        return self.provider.get_tracer("tests")


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    require_sdk()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Any]:
    """celery-saga's instrumentation on, for the test's provider; off afterwards."""
    from celery_saga_opentelemetry import CelerySagaInstrumentor

    instrumentor = CelerySagaInstrumentor()
    instrumentor.instrument(tracer_provider=tracing.provider)
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


@dataclass
class Setup:
    """An app with the test sagas, its store, and a way to run its worker."""

    app: Celery
    sagas: Sagas
    store: Any
    broker: str
    queue: str

    @contextmanager
    def worker(self) -> Iterator[None]:
        """A real worker (threads) in this process, consuming the test's queue."""
        set_event_loop(None)  # each in-process worker needs its own event loop
        try:
            with start_worker(
                self.app,
                pool="threads",
                concurrency=4,
                perform_ping_check=False,
                queues=[self.queue],
                shutdown_timeout=30,
            ):
                yield
        finally:
            set_event_loop(None)

    def purge(self) -> int:
        """Drop the messages waiting in the test's queue (lost, as a broker may lose them)."""
        from kombu import Connection

        with Connection(self.broker) as conn:
            return int(conn.default_channel.queue_purge(self.queue) or 0)


@pytest.fixture(params=OTEL_STORES)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    require(REDIS_URL, 6379, "Redis")
    from support import BROKER_DB

    from celery_saga.config import backend_for

    tag = os.urandom(4).hex()
    queue = f"otel-{tag}"
    broker = f"{REDIS_URL}/{BROKER_DB}"
    with state_store(request.param, tag, tempfile.gettempdir()) as store:
        app = Celery(f"otel-{tag}", broker=broker, set_as_current=False)
        app.conf.update(
            task_default_queue=queue,
            saga_backend=store,
            saga_compensation_retry_backoff=0.01,
            broker_connection_retry_on_startup=True,
        )
        sagas = build(app, tag)
        made = Setup(app, sagas, backend_for(app), broker, queue)
        try:
            yield made
        finally:
            made.purge()
