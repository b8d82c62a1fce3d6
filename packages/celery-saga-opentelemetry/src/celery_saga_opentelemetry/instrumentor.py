"""`CelerySagaInstrumentor`: turn the spans of sagas, steps and compensations on and off."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry import trace

# The module is marked untyped (a file-wide "type: ignore"): its names read as missing.
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from celery_saga import tracing
from celery_saga_opentelemetry import receivers
from celery_saga_opentelemetry.hooks import SagaTraceHooks
from celery_saga_opentelemetry.package import _instruments
from celery_saga_opentelemetry.version import __version__


class CelerySagaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentation of celery-saga.

    ``CelerySagaInstrumentor().instrument(tracer_provider=...)`` in every process that
    runs sagas or their steps (producers, workers, the recovery pass); `uninstrument`
    turns it off. Spans: ``saga <name>`` where a saga is run, ``saga.step <task>`` per
    step attempt and ``saga.compensate <task>`` per compensation in the worker.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(
            __name__,
            __version__,
            kwargs.get("tracer_provider"),
            schema_url="https://opentelemetry.io/schemas/1.11.0",
        )
        hooks = SagaTraceHooks(tracer)
        receivers.connect(hooks)
        tracing.set_trace_hooks(hooks)

    def _uninstrument(self, **kwargs: Any) -> None:
        tracing.set_trace_hooks(None)
        receivers.disconnect()
