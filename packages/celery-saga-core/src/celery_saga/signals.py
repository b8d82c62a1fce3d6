"""Celery-style signals sent as sagas move: connect receivers to observe them.

Each is a `celery.utils.dispatch.Signal`; the sender is the saga name. Receivers
run in the process that made the transition (a worker, or the caller of `run()`);
an exception in a receiver is logged and does not stop the saga.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

saga_started = Signal(name="saga_started", providing_args={"saga_id", "input"})
step_succeeded = Signal(name="step_succeeded", providing_args={"saga_id", "step", "output"})
step_failed = Signal(name="step_failed", providing_args={"saga_id", "step", "error"})
saga_completed = Signal(name="saga_completed", providing_args={"saga_id", "output"})
saga_compensated = Signal(name="saga_compensated", providing_args={"saga_id", "error"})
saga_failed = Signal(name="saga_failed", providing_args={"saga_id", "error"})
saga_cancelled = Signal(name="saga_cancelled", providing_args={"saga_id", "error"})
saga_reverted = Signal(name="saga_reverted", providing_args={"saga_id", "error"})

__all__ = [
    "saga_cancelled",
    "saga_compensated",
    "saga_completed",
    "saga_failed",
    "saga_reverted",
    "saga_started",
    "step_failed",
    "step_succeeded",
]
