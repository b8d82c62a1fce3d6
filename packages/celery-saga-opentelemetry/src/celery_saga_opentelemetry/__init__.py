"""celery-saga-opentelemetry: OpenTelemetry spans for celery-saga.

    from celery_saga_opentelemetry import CelerySagaInstrumentor

    CelerySagaInstrumentor().instrument()

One span per saga execution, a child span per step attempt and per compensation, the
trace context carried in the step messages' headers (so Celery's own instrumentation
nests under the step's span), failures recorded on the span, and a link from an attempt
sent again back to the saga's original trace. See the "Tracing" page of the docs.
"""

from __future__ import annotations

from celery_saga_opentelemetry.instrumentor import CelerySagaInstrumentor
from celery_saga_opentelemetry.version import __version__

__all__ = ["CelerySagaInstrumentor", "__version__"]
