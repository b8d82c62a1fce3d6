"""Testing helpers for celery-saga users and state-store authors.

- `BackendConformance`: the suite a `SagaBackend` must pass (see its docstring).
- `Requirements`: capabilities a store may declare it lacks.
- `make_execution`: build a stored-shape execution for store tests.
"""

from __future__ import annotations

from celery_saga.testing.conformance import BackendConformance, Requirements, make_execution

__all__ = ["BackendConformance", "Requirements", "make_execution"]
