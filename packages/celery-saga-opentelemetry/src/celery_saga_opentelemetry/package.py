"""What this instrumentation instruments, as `BaseInstrumentor` checks it before instrumenting."""

from __future__ import annotations

_instruments = ("celery-saga-core >= 0.5",)
