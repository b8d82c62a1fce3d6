"""What `SagaResult.get()` raises for an execution that did not complete.

Each carries the stored execution. Import them from `celery_saga` (or from
`celery_saga.result`, where celery-saga 0.1 had them).
"""

from __future__ import annotations

from celery_saga.errors import SagaError
from celery_saga.models import SagaExecution


class _SagaOutcomeError(SagaError):
    """Base of the errors `SagaResult.get()` raises for an execution that did not complete."""

    def __init__(self, message: str, execution: SagaExecution) -> None:
        super().__init__(message)
        self.execution = execution

    @property
    def saga_id(self) -> str:
        """Id of the execution this error is about."""
        return self.execution.saga_id


class SagaCompensated(_SagaOutcomeError):
    """The saga failed and every completed step was compensated."""


class SagaFailed(_SagaOutcomeError):
    """The saga failed and at least one compensation could not be done."""


class SagaCancelled(SagaCompensated):
    """The saga was cancelled and every completed step was compensated."""


class SagaReverted(SagaCompensated):
    """The saga had completed and was reverted on request: every step was compensated."""
