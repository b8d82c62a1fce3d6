"""A saga message for a task the receiving worker does not have: fail the step at once.

Celery rejects such a message and sends `task_unknown` from the worker's consumer.
Instead of leaving the step RUNNING until recovery sends it again (and again), the
step (or compensation) fails right away with the task's name and the worker's, and
the saga compensates.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery.signals import task_unknown

from celery_saga.errors import SagaError
from celery_saga.headers import HEADER, SagaHeader
from celery_saga.runtime import compensation, forward, orphans
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.log import log


def unknown_task_error(name: str, worker: str) -> str:
    """What the step's record says when no worker had its task."""
    return (
        f"NotRegistered: task {name!r} is not registered on worker {worker}: fix the task "
        "name (or its route), or make that worker import the module that defines it"
    )


@task_unknown.connect  # type: ignore[untyped-decorator]
def _on_task_unknown(sender: Any = None, message: Any = None, name: str = "", **_: Any) -> None:
    headers = getattr(message, "headers", None)
    header = SagaHeader.from_dict(headers.get(HEADER)) if isinstance(headers, dict) else None
    app = getattr(sender, "app", None)
    if header is None or app is None:
        return
    worker = getattr(sender, "hostname", None) or socket.gethostname()
    error = unknown_task_error(name, worker)
    log(logging.ERROR, header.saga_id, header.index, "%s", error)
    try:
        try:
            rt = Runtime.for_header(header, app)
        except SagaError:
            orphans.record_unregistered(app, header, succeeded=False, error=error)
            return
        if header.compensation:
            compensation.compensation_failed(rt, header, error)
        else:
            forward.step_failed(rt, header, error, None, ("NotRegistered",))
    except Exception as exc:  # never break the worker's consumer; recovery still finds it
        log(logging.ERROR, header.saga_id, header.index, "recording %s failed: %r", error, exc)
