"""`MongoSagaBackend.wait` on a change stream of the execution.

The stream is opened before the execution is read, so a status change between the
read and the wait is still seen. Only events that can end a wait (a status change, a
replacement, a deletion) wake it. The server holds each ``getMore`` for at most a
second (or the timeout, if shorter), so a timed-out wait returns at most that much
late. Change streams need a replica set or a sharded cluster (SecantusDB advertises a
single-node replica set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pymongo.collection import Collection as MongoCollection
from pymongo.errors import OperationFailure

from celery_saga.backends.base import StoreStats
from celery_saga.models import TERMINAL_STATUSES, SagaExecution

logger = logging.getLogger("celery_saga.mongo")

#: Longest single wait on a change stream before the deadline is checked again.
STREAM_AWAIT_MS = 1000


class StreamRefused(Exception):
    """The server refused to open a change stream (`error`: no replica set, no privilege)."""

    def __init__(self, error: OperationFailure) -> None:
        super().__init__(str(error))
        self.error = error


def wait_on_stream(
    executions: MongoCollection[dict[str, Any]],
    stats: StoreStats,
    saga_id: str,
    timeout: float | None,
    read: Callable[[str], SagaExecution | None],
    poll: Callable[[float | None], SagaExecution | None],
) -> SagaExecution | None:
    """The finished execution, or None once `timeout` seconds passed.

    `read` reads the execution; `poll(seconds)` waits by polling instead, for a stream
    that ends (its collection dropped, its history lost). Raises `StreamRefused` when
    the server will not open one.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    await_ms = STREAM_AWAIT_MS
    if timeout is not None:
        await_ms = max(1, min(await_ms, int(timeout * 1000)))
    pipeline = [
        {
            "$match": {
                "documentKey._id": saga_id,
                "$or": [
                    {"operationType": {"$ne": "update"}},
                    {"updateDescription.updatedFields.status": {"$exists": True}},
                ],
            }
        }
    ]
    try:
        stats.add()
        stream = executions.watch(pipeline, max_await_time_ms=await_ms)
    except OperationFailure as exc:
        raise StreamRefused(exc) from exc
    with stream:
        while True:
            execution = read(saga_id)
            if execution is not None and execution.status in TERMINAL_STATUSES:
                return execution
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                if not stream.alive:  # invalidated (collection dropped): poll
                    return poll(left)
                stats.add()
                try:
                    event = stream.try_next()
                except OperationFailure as exc:  # not resumable (history lost, ...)
                    logger.info("change stream ended (%s): wait() polls instead", exc)
                    return poll(left)
                if event is not None:
                    break
