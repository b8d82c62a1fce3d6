"""Send signatures on the saga's own app, reusing one producer per batch.

Every message goes out as JSON (`SERIALIZER`), whatever the app's `task_serializer`.
In eager mode (`task_always_eager`) a step that dispatches the next stage would
recurse once per step; instead the outermost send drains a per-thread queue, so a
long saga runs as a loop, like `chain.apply()`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from celery_saga.compiler import SERIALIZER
from celery_saga.runtime.log import logger

if TYPE_CHECKING:
    from celery import Celery
    from celery.canvas import Signature

EagerErrorHandler = Callable[["Signature", Exception], None]

_local = threading.local()


def is_eager(app: Celery) -> bool:
    """True when the app runs tasks inline (`task_always_eager`)."""
    return bool(app.conf.task_always_eager)


def send(
    app: Celery,
    signatures: Sequence[Signature],
    on_eager_error: EagerErrorHandler | None = None,
) -> None:
    """Publish `signatures` (or, eagerly, run them after the current one returns)."""
    if not signatures:
        return
    if is_eager(app):
        _send_eager(signatures, on_eager_error)
        return
    with app.producer_or_acquire() as producer:
        for sig in signatures:
            sig.apply_async(producer=producer, serializer=SERIALIZER)


def _send_eager(signatures: Sequence[Signature], handler: EagerErrorHandler | None) -> None:
    pending: deque[tuple[Signature, EagerErrorHandler | None]] | None = getattr(
        _local, "pending", None
    )
    if pending is not None:
        pending.extend((sig, handler) for sig in signatures)
        return
    pending = _local.pending = deque((sig, handler) for sig in signatures)
    try:
        while pending:
            sig, on_error = pending.popleft()
            try:
                sig.apply_async()
            except Exception as exc:  # task_eager_propagates raises here
                if on_error is None:
                    logger.exception("eager saga task %s raised", sig.task)
                else:
                    on_error(sig, exc)
    finally:
        _local.pending = None
