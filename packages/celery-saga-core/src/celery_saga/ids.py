"""Saga ids, idempotency keys and Celery task ids: made and checked in one place.

A step's Celery task id names its saga, step and attempt, so a bare task id leads
back to the step (`parse_task_id`). Ids that come from outside are validated here
before they reach a store query.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from celery_saga.errors import InvalidSagaId

_SAGA_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TASK_ID = re.compile(
    r"^(?P<saga>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"-(?P<kind>[sc])(?P<index>\d+)-(?P<attempt>\d+)$"
)
MAX_IDEMPOTENCY_KEY = 255


def new_saga_id() -> str:
    """A fresh saga id (a lowercase UUID4 string)."""
    return str(uuid.uuid4())


def validate_saga_id(value: object) -> str:
    """Return `value` if it is a saga id, else raise InvalidSagaId saying what one looks like."""
    if isinstance(value, str):
        candidate = value.strip().lower()
        if _SAGA_ID.match(candidate):
            return candidate
    raise InvalidSagaId(
        f"{value!r} is not a saga id: expected a UUID such as "
        "'3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d' (see `celery saga list`)"
    )


def validate_idempotency_key(value: object) -> str:
    """Idempotency keys are non-empty strings of at most 255 characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise ValueError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            f"characters, got {value!r}"
        )
    return value


def step_task_id(saga_id: str, index: int, attempt: int, *, compensation: bool = False) -> str:
    """The Celery task id of one attempt of a step (or of its compensation)."""
    return f"{saga_id}-{'c' if compensation else 's'}{index}-{attempt}"


def idempotency_key_for(saga_id: str, index: int) -> str:
    """The stable key a step can use to deduplicate its side effects."""
    return f"{saga_id}:{index}"


@dataclass(frozen=True)
class TaskRef:
    """What a saga task id says: which saga, step, kind and attempt."""

    saga_id: str
    index: int
    attempt: int
    compensation: bool


def parse_task_id(task_id: str) -> TaskRef | None:
    """Read a task id made by `step_task_id`; None for any other task id."""
    match = _TASK_ID.match(task_id or "")
    if match is None:
        return None
    return TaskRef(
        saga_id=match["saga"],
        index=int(match["index"]),
        attempt=int(match["attempt"]),
        compensation=match["kind"] == "c",
    )
