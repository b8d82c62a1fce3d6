"""Outcomes that reach a process without the saga's definition: record them, lose nothing.

The step's outcome is recorded (its stage is read from the record), the saga's
error says what happened, and the recovery pass, run where the saga is defined,
moves it on.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from celery_saga.backends.base import StepExpect
from celery_saga.config import backend_for
from celery_saga.models import StepStatus, now
from celery_saga.runtime.decide import FORWARD
from celery_saga.runtime.log import log

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.headers import SagaHeader

_COMPENSATING = frozenset({StepStatus.COMPENSATING})


def record_unregistered(
    app: Celery,
    header: SagaHeader,
    *,
    succeeded: bool,
    output: Any = None,
    compensation_data: Any = None,
    error: str | None = None,
) -> bool:
    """Store an outcome that reached a process without the saga's definition."""
    backend = backend_for(app)
    execution = backend.get(header.saga_id)
    if execution is None:
        return False
    record = execution.step(header.index)
    if header.compensation:
        changes: dict[str, Any] = {
            "status": StepStatus.COMPENSATED if succeeded else StepStatus.COMPENSATION_FAILED,
            "comp_finished_at": now(),
            "comp_error": error,
        }
        write = backend.update_step(
            header.saga_id,
            header.index,
            changes,
            expect=StepExpect(status=_COMPENSATING, comp_attempt=header.attempt),
        )
    else:
        changes = {
            "status": StepStatus.SUCCESS if succeeded else StepStatus.FAILED,
            "finished_at": now(),
            "attempt": header.attempt,
            "error": error,
        }
        if succeeded:
            changes.update(output=output, compensation_data=compensation_data)
        elif compensation_data is not None:
            changes["compensation_data"] = compensation_data
        write = backend.update_step(
            header.saga_id,
            header.index,
            changes,
            expect=StepExpect(status=FORWARD, attempt_at_most=header.attempt),
            count_in=f"stage:{record.stage}",
        )
    if write.applied:
        note = (
            f"saga {header.saga_name!r} is not registered on worker {_worker_name()}, which "
            f"received the outcome of step {header.index}: make that worker import the module "
            "that defines the saga (the app's `include`/`imports`, or the module given to "
            "-A). The outcome is recorded; `celery saga recover` (or the recovery task) run "
            "where the saga is defined moves it on"
        )
        log(logging.ERROR, header.saga_id, header.index, "%s", note)
        backend.update_saga(header.saga_id, {"error": note})
    return write.applied


def _worker_name() -> str:
    """The name of the worker running the current task (``celery@host``), or this host."""
    from celery import current_task

    task = current_task._get_current_object()
    hostname = getattr(getattr(task, "request", None), "hostname", None)
    return str(hostname) if hostname else socket.gethostname()
