"""Testing helpers for celery-saga users and state-store authors.

- `BackendConformance`: the suite a `SagaBackend` must pass (see its docstring).
- `Requirements`: capabilities a store may declare it lacks.
- `make_execution`: build a stored-shape execution for store tests.

Install with the ``testing`` extra (``pip install "celery-saga-core[testing]"``), which
brings pytest.
"""

from __future__ import annotations

import pytest

#: The kit's modules. pytest rewrites their asserts as it does a test file's, so a
#: failing check shows the values it compared, wherever the kit is installed. This must
#: run before they are imported (below); a new module of the kit goes here too.
KIT_MODULES = (
    "celery_saga.testing.kit",
    "celery_saga.testing.records",
    "celery_saga.testing.finishing",
    "celery_saga.testing.lease_tests",
    "celery_saga.testing.listing",
    "celery_saga.testing.composition",
    "celery_saga.testing.attempts",
    "celery_saga.testing.waiting",
    "celery_saga.testing.processes",
    "celery_saga.testing.conformance",
)
pytest.register_assert_rewrite(*KIT_MODULES)

from celery_saga.testing.conformance import (  # noqa: E402 (after the registration)
    BackendConformance,
    Requirements,
    make_execution,
)

__all__ = ["KIT_MODULES", "BackendConformance", "Requirements", "make_execution"]
