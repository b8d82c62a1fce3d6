"""What `SagaResult.get()` raises for an execution that did not complete (or not in time).

Each carries the stored execution. Import them from `celery_saga` (or from
`celery_saga.result`, where celery-saga 0.1 had them).
"""

from __future__ import annotations

from typing import Any

from celery_saga.errors import SagaError
from celery_saga.models import SagaExecution, SagaStatus


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


class SagaTimeoutError(TimeoutError):
    """`SagaResult.get(timeout)` ran out of time; the saga itself goes on.

    A `TimeoutError` (code that caught that keeps working) that also carries what the
    store said at that moment: `execution` (as read when the wait ended), its `status`,
    and its `note` (the error recorded on it, such as a worker that does not know the
    saga or runs another definition of it), and `timeout`, the seconds waited. The
    message says which step it waits for and what to check.
    """

    def __init__(self, message: str, execution: SagaExecution, timeout: float | None) -> None:
        super().__init__(message)
        self.execution = execution
        self.timeout = timeout

    @property
    def saga_id(self) -> str:
        """Id of the execution that did not finish in time."""
        return self.execution.saga_id

    @property
    def status(self) -> SagaStatus:
        """The execution's status when the wait ended (RUNNING, PENDING, COMPENSATING)."""
        return self.execution.status

    @property
    def note(self) -> str | None:
        """The error or note stored on the execution, if any."""
        return self.execution.error

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by the constructor's arguments (OSError would pickle the message only)."""
        return type(self), (str(self), self.execution, self.timeout)
