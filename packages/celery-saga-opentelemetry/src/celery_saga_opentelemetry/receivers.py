"""Connecting the worker's receivers so Celery's own instrumentation nests under ours.

Celery's instrumentation (opentelemetry-instrumentation-celery) starts its
``run/<task>`` span in ``task_prerun`` from the context on the task's request. Our
``task_prerun`` receiver must run first, to put the attempt's span there: receivers run
in the order they were connected, so when Celery's instrumentation is already on, its
receivers are connected again after ours (its ``task_postrun`` too, so its span ends
before ours). When it is turned on later, its receivers come after ours by themselves.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import signals

from celery_saga_opentelemetry.hooks import SagaTraceHooks

_PRERUN_UID = "celery_saga_opentelemetry.prerun"
_POSTRUN_UID = "celery_saga_opentelemetry.postrun"


def _celery_receivers() -> list[tuple[Any, Any]]:
    """Celery's instrumentation's prerun and postrun receivers, if it is on."""
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    instrumentor = getattr(getattr(module, "CeleryInstrumentor", None), "_instance", None)
    if instrumentor is None or not instrumentor.is_instrumented_by_opentelemetry:
        return []
    found = []
    for signal, name in (
        (signals.task_prerun, "_trace_prerun"),
        (signals.task_postrun, "_trace_postrun"),
    ):
        receiver = getattr(instrumentor, name, None)
        if receiver is not None:
            found.append((signal, receiver))
    return found


def connect(hooks: SagaTraceHooks) -> None:
    """Connect `hooks`' receivers: our prerun before Celery's, our postrun after it."""
    moved = [(signal, r) for signal, r in _celery_receivers() if signal.disconnect(r)]
    signals.task_prerun.connect(hooks.on_prerun, weak=False, dispatch_uid=_PRERUN_UID)
    for signal, receiver in moved:
        signal.connect(receiver, weak=False)
    signals.task_postrun.connect(hooks.on_postrun, weak=False, dispatch_uid=_POSTRUN_UID)


def disconnect() -> None:
    """Disconnect the receivers `connect` connected."""
    signals.task_prerun.disconnect(dispatch_uid=_PRERUN_UID)
    signals.task_postrun.disconnect(dispatch_uid=_POSTRUN_UID)
