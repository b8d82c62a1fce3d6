"""The exceptions celery-saga raises (the outcomes `SagaResult.get()` raises are in
`celery_saga.outcomes`, since they carry the execution).

Messages name the thing that is wrong, the value seen, and what to do next.
"""

from __future__ import annotations

from typing import Any

from celery_saga.plain import to_plain


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


class StoreNotFound(SagaError, LookupError):
    """A store opened for reading only is not there (no database file, no tables).

    Raised by stores opened with `SagaBackend.open_for_reading` (what ``celery saga
    list`` and ``show`` do) instead of creating an empty store at a mistyped URL.
    """


class SagaRecordNotFound(SagaError, LookupError):
    """A worker got a message for a saga its store has no record of.

    Almost always the producer and the worker use different stores (another
    ``saga_backend`` URL, database or ``?prefix=``): nothing can be recorded, and
    neither retrying nor the recovery pass can help, so the message is dropped.
    """


class SchemaVersionError(SagaError):
    """A stored record was written by a newer celery-saga than this one."""


class CorruptRecordError(SagaError, ValueError):
    """A stored record holds a value no celery-saga writes (damaged or edited by hand)."""

    def __init__(self, problem: str, saga_id: str | None = None) -> None:
        super().__init__(
            f"saga record {saga_id!r} cannot be read: {problem}. It was damaged or changed "
            "outside celery-saga: inspect it with the store's own tools (redis-cli, psql, "
            "mysql, mongosh), then repair or delete it there. Other sagas are not affected."
        )
        self.problem = problem
        self.saga_id = saga_id

    def __reduce__(self) -> tuple[type[CorruptRecordError], tuple[str, str | None]]:
        """Pickle by the constructor's arguments (Celery may pickle errors)."""
        return type(self), (self.problem, self.saga_id)


def read_error(saga_id: str, exc: Exception) -> str:
    """One line saying why the stored record of `saga_id` could not be read."""
    if isinstance(exc, SagaError):
        return str(exc)
    if isinstance(exc, ValueError | TypeError | KeyError | AttributeError):  # e.g. bad JSON
        return str(CorruptRecordError(f"{type(exc).__name__}: {exc}", saga_id))
    # e.g. the store is unreachable: nothing says the record is damaged
    return f"saga record {saga_id!r} cannot be read: {type(exc).__name__}: {exc}"


class StepOutputError(SagaError, TypeError):
    """A value a saga stores or sends cannot be JSON: a step's output or compensation
    data, a step's input, or the saga's output (the message says which, and where)."""


class SagaInputError(StepOutputError):
    """The input given to `Saga.run()` cannot be stored as JSON (nothing was started).

    A `StepOutputError` subclass, so code written for 0.3 that caught that still works.
    """


class UncompensatedStepWarning(UserWarning):
    """A saga step has no compensation and does not say it needs none.

    If the saga fails after such a step, nothing undoes it. Warned once per saga and
    step, when the saga is defined; give the step a compensation, or pass
    ``no_compensation=True`` when it has nothing to undo.
    """


class InvalidSagaId(SagaError, ValueError):
    """An id given from outside is not a saga id."""


class PermanentFailure(Exception):
    """Raised by a step to fail at once: no retries, then compensation.

    `compensation_data` is what the step's own compensation receives, so a step
    that did part of its work can have that part undone.
    """

    def __init__(self, message: str, compensation_data: Any = None) -> None:
        super().__init__(message)
        self.compensation_data = to_plain(compensation_data)
