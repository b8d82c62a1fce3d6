"""Every exception celery-saga raises, in one place.

Messages name the thing that is wrong, the value seen, and what to do next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_saga.models import SagaExecution


class SagaError(Exception):
    """Base class of celery-saga's own errors."""


class SagaDefinitionError(SagaError, TypeError):
    """A saga was defined wrongly (raised when the definition is made)."""


class SagaNotRegistered(SagaError, LookupError):
    """A message names a saga this process has no definition for."""


class SagaDefinitionMismatch(SagaError):
    """The stored execution was started by a different definition than the one here."""


class BackendNotFound(SagaError, LookupError):
    """No installed state store handles the URL scheme asked for."""


class SchemaVersionError(SagaError):
    """A stored record was written by a newer celery-saga than this one."""


class StepOutputError(SagaError, TypeError):
    """A step returned something that cannot be stored as JSON."""


class InvalidSagaId(SagaError, ValueError):
    """An id given from outside is not a saga id."""


class PermanentFailure(Exception):
    """Raised by a step to fail at once: no retries, then compensation.

    `compensation_data` is what the step's own compensation receives, so a step
    that did part of its work can have that part undone.
    """

    def __init__(self, message: str, compensation_data: Any = None) -> None:
        super().__init__(message)
        from celery_saga.response import to_plain

        self.compensation_data = to_plain(compensation_data)


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
