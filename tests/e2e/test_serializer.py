"""Saga messages are JSON whatever the app's serializer (DESIGN section 6).

The app here pickles its own tasks (``task_serializer="pickle"``). A real worker
(threads, on the Redis broker) runs a saga whose steps, compensations and reply
messages cover every kind of message the runtime sends, and the content type of
each message it receives is recorded. A second test reads a step message raw
from a queue no worker consumes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_received
from e2e_support import broker_url, delete_queues, wait_for
from kombu.asynchronous import set_event_loop

from celery_saga import RetryPolicy, Saga, SagaStatus, StepStatus, saga_step
from celery_saga.backends import MemorySagaBackend
from celery_saga.compiler import REPLY_FAILURE, REPLY_SUCCESS, step_signature
from celery_saga.headers import HEADER

TIMEOUT = 60
JSON = "application/json"
PICKLE = "application/x-python-serialize"


def _pickling_app(tag: str, queue: str) -> Celery:
    app = Celery(f"ser-{tag}", broker=broker_url("redis"), set_as_current=False)
    app.conf.update(
        task_serializer="pickle",
        accept_content=["pickle", "json"],
        task_default_queue=queue,
        saga_backend=MemorySagaBackend(),
        saga_compensation_retry_backoff=0,
        broker_connection_retry_on_startup=True,
    )
    return app


@pytest.fixture
def tag() -> str:
    return os.urandom(4).hex()


@pytest.fixture
def queue(tag: str) -> Iterator[str]:
    name = f"ser-{tag}"
    yield name
    delete_queues(broker_url("redis"), [name])


def _saga(app: Celery, tag: str) -> Saga:
    """A step object, a named step, and a named step that fails after one saga-level retry.

    Together they send: step messages (first attempts and a retry with a
    countdown), reply callbacks and errbacks of named steps, the errback's
    forwarded failure, and compensations by object and by name.
    """

    @app.task(shared=False, name=f"ser-{tag}.undo_reserve")
    def undo_reserve(data: dict[str, Any]) -> None:
        return None

    @saga_step(compensate=undo_reserve)
    @app.task(shared=False, name=f"ser-{tag}.reserve")
    def reserve(**kwargs: Any) -> dict[str, Any]:
        return {"reservation": "r-1"}

    @app.task(shared=False, name=f"ser-{tag}.charge")
    def charge(**kwargs: Any) -> dict[str, Any]:
        return {"txn": "t-1"}

    @app.task(shared=False, name=f"ser-{tag}.refund")
    def refund(data: dict[str, Any]) -> None:
        return None

    @app.task(shared=False, name=f"ser-{tag}.ship")
    def ship(**kwargs: Any) -> None:
        raise RuntimeError("no courier")

    return (
        Saga(f"ser-{tag}", app=app)
        .add_step(reserve)
        .add_step(f"ser-{tag}.charge", compensate=f"ser-{tag}.refund")
        .add_step(
            f"ser-{tag}.ship",
            no_compensation=True,
            retry=RetryPolicy(max_retries=1, backoff=0.05, jitter=False),
        )
    )


def test_every_saga_message_a_pickling_app_sends_is_json(tag: str, queue: str) -> None:
    app = _pickling_app(tag, queue)
    saga = _saga(app, tag)

    @app.task(shared=False, name=f"ser-{tag}.plain")
    def plain() -> None:
        return None

    received: list[tuple[str, str]] = []

    def record(sender: Any = None, request: Any = None, **_: Any) -> None:
        if (request.delivery_info or {}).get("routing_key") == queue:
            received.append((request.name, request.content_type))

    task_received.connect(record, weak=False)
    set_event_loop(None)  # a fresh kombu hub for this worker (see tests/e2e/conftest.py)
    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, queues=[queue]
        ):
            # The app really pickles: a plain task of it arrives as pickle.
            plain.apply_async()
            wait_for(lambda: (plain.name, PICKLE) in received, TIMEOUT, "the plain task")

            result = saga.run(order="o-1")
            wait_for(lambda: result.is_complete, TIMEOUT, "the saga to finish")
            # The last message of the saga (the compensation of step 0) was received
            # before the status was written.
            saga_messages = [(name, kind) for name, kind in received if name != plain.name]
    finally:
        task_received.disconnect(record)
        set_event_loop(None)

    execution = result.execution
    assert execution is not None and execution.status is SagaStatus.COMPENSATED
    assert [s.status for s in execution.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]
    assert execution.steps[2].attempt == 2  # the saga-level retry was sent and ran
    names = [name for name, _ in saga_messages]
    for expected in (
        f"ser-{tag}.reserve",
        f"ser-{tag}.charge",
        f"ser-{tag}.ship",
        f"ser-{tag}.refund",
        f"ser-{tag}.undo_reserve",
        REPLY_SUCCESS,
        REPLY_FAILURE,
    ):
        assert expected in names, f"no {expected} message was received: {names}"
    assert names.count(f"ser-{tag}.ship") == 2
    not_json = [(name, kind) for name, kind in saga_messages if kind != JSON]
    assert not not_json, f"saga messages sent with another serializer: {not_json}"


def test_a_step_message_on_the_broker_is_json_with_json_replies(tag: str, queue: str) -> None:
    app = _pickling_app(tag, queue)
    saga = _saga(app, tag)
    # No worker consumes `queue`: the first step's message stays on the broker.
    result = saga.run(order="o-2", queue=queue)

    with app.connection_for_read() as conn:
        inbox = conn.SimpleQueue(queue, accept=["json", "pickle"])  # so a pickle one shows
        try:
            message = inbox.get(timeout=TIMEOUT)
            message.ack()
        finally:
            inbox.close()
    assert message.content_type == JSON
    assert message.headers["task"] == f"ser-{tag}.reserve"
    assert message.headers[HEADER]["id"] == result.saga_id
    args, kwargs, embed = message.decode()
    assert (args, kwargs) == ([], {"order": "o-2"})
    assert embed["callbacks"] is None  # a step object reports from its own worker

    # A named step's message carries reply callbacks that are sent as JSON too.
    execution = result.execution
    assert execution is not None
    sig = step_signature(saga.definition, execution, saga.definition.step(1), 1, {"x": 1})
    assert sig.options["serializer"] == "json"
    (link,) = sig.options["link"]
    (link_error,) = sig.options["link_error"]
    assert link.options["serializer"] == link_error.options["serializer"] == "json"
