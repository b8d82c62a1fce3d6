"""State stores: the `SagaBackend` contract, the memory store, and the registry.

`RedisSagaBackend`, `SQLSagaBackend` and `MongoSagaBackend` live in their own
packages and are imported here only when first used, so installing one never
imports another's driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from celery_saga.backends.base import (
    Lease,
    Outcome,
    Page,
    SagaBackend,
    StartNext,
    StepExpect,
    StepWrite,
    StoreStats,
)
from celery_saga.backends.memory import MemorySagaBackend
from celery_saga.backends.registry import (
    ENTRY_POINT_GROUP,
    backend_class,
    backend_for_reading,
    backend_from_url,
    installed_schemes,
    register,
)

if TYPE_CHECKING:  # pragma: no cover
    from celery_saga_mongo import MongoSagaBackend
    from celery_saga_redis import RedisSagaBackend
    from celery_saga_sql import SQLSagaBackend

#: Store classes that live in separate packages: name -> (module, package to install).
_LAZY = {
    "RedisSagaBackend": ("celery_saga_redis", "celery-saga-redis", "redis"),
    "SQLSagaBackend": ("celery_saga_sql", "celery-saga-sql", "sql"),
    "MongoSagaBackend": ("celery_saga_mongo", "celery-saga-mongo", "mongo"),
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "Lease",
    "MemorySagaBackend",
    "MongoSagaBackend",
    "Outcome",
    "Page",
    "RedisSagaBackend",
    "SQLSagaBackend",
    "SagaBackend",
    "StartNext",
    "StepExpect",
    "StepWrite",
    "StoreStats",
    "backend_class",
    "backend_for_reading",
    "backend_from_url",
    "installed_schemes",
    "register",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, package, extra = _LAZY[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            raise ImportError(
                f"{name} is in the package {package}, which is not installed: "
                f"pip install {package}  (or: pip install 'celery-saga[{extra}]')",
                name=module_name,
            ) from None
        return getattr(module, name)
    raise AttributeError(f"module 'celery_saga.backends' has no attribute {name!r}")
