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

_SAGA_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TASK_ID = re.compile(
    r"^(?P<saga>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"-(?P<kind>[sc])(?P<index>\d+)-(?P<attempt>\d+)$"
)
#: The length of every saga id (a UUID's text form; the SQL store's column width).
SAGA_ID_LENGTH = 36
MAX_IDEMPOTENCY_KEY = 255
_SAGA_ID_SHAPE = (
    "a saga id is a UUID as new_saga_id() makes it: 36 characters, hex digits and dashes, "
    "such as '3f2b6c1e-8d4a-4c7e-9b1a-2e5f6a7b8c9d' (SagaResult.saga_id, or `celery saga list`)"
)
_SHOWN = 60
#: C0 and C1 control characters (NUL among them) and DEL: never part of an id or key.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x1f\x7f-\x9f\s]")


def new_saga_id() -> str:
    """A fresh saga id (a lowercase UUID4 string)."""
    return str(uuid.uuid4())


def validate_saga_id(value: object) -> str:
    """Return `value` as a saga id (lowercased), or raise InvalidSagaId saying why.

    Every saga id is what `new_saga_id` makes: a UUID in its 36-character text form
    (any version; upper case is accepted and lowered). Ids that come from outside
    (API calls, the CLI, message headers) pass through here before they reach a
    store, so a NUL byte, a control character, an empty or over-long string or a
    non-string gets this ValueError instead of a driver's error or a wasted query.
    """
    if isinstance(value, str):
        if _SAGA_ID.fullmatch(value):
            return value
        if value.isascii() and _SAGA_ID.fullmatch(value.lower()):
            return value.lower()
    raise InvalidSagaId(f"{_shown(value)} is not a saga id: {_why_not(value)}; {_SAGA_ID_SHAPE}")


def _why_not(value: object) -> str:
    """What is wrong with a value that is not a saga id, in a few words."""
    if not isinstance(value, str):
        return f"it is of type {type(value).__name__}, not a string"
    if not value:
        return "it is empty"
    bad = _CONTROL_OR_SPACE.search(value)
    if bad is not None:
        char = bad.group()
        kind = "a NUL byte" if char == "\0" else f"the character {char!r}"
        return f"it contains {kind} at position {bad.start()}"
    if len(value) != SAGA_ID_LENGTH:
        return f"it is {len(value)} characters long, not {SAGA_ID_LENGTH}"
    return "it is not a UUID"


def _shown(value: object) -> str:
    """A short repr of `value` for an error message (long values are cut)."""
    text = repr(value)
    if len(text) <= _SHOWN:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[: _SHOWN - 3]}...{size}"


def validate_idempotency_key(value: object) -> str:
    """Idempotency keys are non-empty strings of at most 255 characters, without control characters.

    A NUL byte, for one, is refused by PostgreSQL's driver; it is refused here first.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_IDEMPOTENCY_KEY:
        raise ValueError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            f"characters, got {_shown(value)}"
        )
    bad = _CONTROL.search(value)
    if bad is not None:
        raise ValueError(
            f"idempotency_key must not contain control characters, got {_shown(value)} with "
            f"{bad.group()!r} at position {bad.start()}: use printable text such as 'order-1234'"
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
