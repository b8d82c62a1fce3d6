"""celery-saga: the saga pattern for Celery.

A saga is a business transaction cut into steps; each step is a Celery task with
a compensating task. When a step fails for good, the steps already done are
undone in reverse order. Execution state lives in a pluggable state store.
"""

from __future__ import annotations

from celery_saga import client as _client  # noqa: F401  (Saga.run() starts through it)
from celery_saga.builder import Saga
from celery_saga.config import set_default_backend
from celery_saga.decorators import saga_step, saga_task
from celery_saga.errors import (
    BackendNotFound,
    PermanentFailure,
    SagaDefinitionError,
    SagaDefinitionMismatch,
    SagaError,
    SagaInputError,
    SagaNotRegistered,
    SagaRecordNotFound,
    SchemaVersionError,
    StepOutputError,
    StoreNotFound,
    UncompensatedStepWarning,
)
from celery_saga.functional import external, parallelize, saga, step, transform, when
from celery_saga.headers import current_step, idempotency_key
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepRecord, StepStatus
from celery_saga.outcomes import (
    SagaCancelled,
    SagaCompensated,
    SagaFailed,
    SagaReverted,
    SagaTimeoutError,
)
from celery_saga.response import StepResponse
from celery_saga.result import SagaResult
from celery_saga.retry import RetryPolicy
from celery_saga.runtime import children as _children  # noqa: F401  (child saga steps)
from celery_saga.runtime import external as _external  # noqa: F401  (external steps)
from celery_saga.runtime import instrument as _instrument  # noqa: F401  (instruments step tasks)
from celery_saga.runtime import recovery as _recovery  # noqa: F401  (registers celery_saga.recover)
from celery_saga.runtime import replies as _replies  # noqa: F401  (registers reply tasks)
from celery_saga.runtime import unknown as _unknown  # noqa: F401  (fails steps no worker has)
from celery_saga.runtime.external import StepCompletion
from celery_saga.runtime.recovery import RecoveryReport, recover
from celery_saga.version import __version__

__all__ = [
    "BackendNotFound",
    "PermanentFailure",
    "RecoveryReport",
    "RetryPolicy",
    "Saga",
    "SagaCancelled",
    "SagaCompensated",
    "SagaDefinitionError",
    "SagaDefinitionMismatch",
    "SagaError",
    "SagaExecution",
    "SagaFailed",
    "SagaInputError",
    "SagaNotRegistered",
    "SagaRecordNotFound",
    "SagaResult",
    "SagaReverted",
    "SagaStatus",
    "SagaTimeoutError",
    "SchemaVersionError",
    "StepCompletion",
    "StepKind",
    "StepOutputError",
    "StepRecord",
    "StepResponse",
    "StepStatus",
    "StoreNotFound",
    "UncompensatedStepWarning",
    "__version__",
    "current_step",
    "external",
    "idempotency_key",
    "parallelize",
    "recover",
    "saga",
    "saga_step",
    "saga_task",
    "set_default_backend",
    "step",
    "transform",
    "when",
]
