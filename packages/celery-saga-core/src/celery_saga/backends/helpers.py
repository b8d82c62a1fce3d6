"""Helpers every store implementation shares: argument checks, cursors, payload sizes.

Stores import them from here (or, as before, from `celery_saga.backends.base`), so
every store refuses the same bad arguments with the same clear message.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

from celery_saga.models import (
    STEP_MUTABLE_FIELDS,
    TERMINAL_STATUSES,
    SagaStatus,
    StepKind,
    StepStatus,
)

#: Fields `update_saga` may change.
SAGA_MUTABLE_FIELDS = frozenset(
    {"status", "output", "error", "failed_step", "finished_at", "cancelled_at", "revert_reason"}
)


def payload_size(*values: Any) -> int:
    """Bytes of `values` as JSON text (strings count as their UTF-8 length)."""
    total = 0
    for value in values:
        if isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, str):
            total += len(value.encode())
        else:
            total += len(compact_json(value).encode())
    return total


def check_step_changes(changes: Mapping[str, Any]) -> None:
    """Refuse unknown step fields before anything is written."""
    unknown = set(changes) - STEP_MUTABLE_FIELDS
    if unknown:
        raise ValueError(
            f"update_step got fields it cannot set: {sorted(unknown)}; "
            f"settable fields are {sorted(STEP_MUTABLE_FIELDS)}"
        )


def check_saga_changes(changes: Mapping[str, Any]) -> None:
    """Refuse unknown execution fields before anything is written."""
    unknown = set(changes) - SAGA_MUTABLE_FIELDS
    if unknown:
        raise ValueError(
            f"update_saga got fields it cannot set: {sorted(unknown)}; "
            f"settable fields are {sorted(SAGA_MUTABLE_FIELDS)}"
        )


_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
_ASCII_STRING: Any = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.py_encode_basestring_ascii
)


#: The enums a store write holds (their values are strings); a tuple, for isinstance.
_STORED_ENUMS = (SagaStatus, StepStatus, StepKind)


def compact_json(value: Any) -> str:
    """``json.dumps(plain_value(value), separators=(",", ":"))``, the same text, faster.

    Every store write encodes a dozen values: strings, numbers, statuses and None are
    written directly, and the rest go through one encoder made once (``json.dumps`` with
    `separators` makes a new encoder on every call).
    """
    kind = type(value)
    if kind is str:
        return str(_ASCII_STRING(value))
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind in _STORED_ENUMS:
        return str(_ASCII_STRING(value.value))
    return _COMPACT(plain_value(value))


def plain_value(value: Any) -> Any:
    """Enum members become their values, so changes can be stored as JSON."""
    if isinstance(value, _STORED_ENUMS):
        return value.value
    return value


def normalize_status(status: SagaStatus | str | None) -> SagaStatus | None:
    """Accept a status or its string value; raise a clear error for anything else."""
    if status is None or isinstance(status, SagaStatus):
        return status
    try:
        return SagaStatus(str(status).lower())
    except ValueError:
        choices = ", ".join(s.value for s in SagaStatus)
        raise ValueError(f"unknown saga status {status!r}; use one of: {choices}") from None


def encode_cursor(created_at: float, saga_id: str) -> str:
    """Opaque listing cursor: the position of the last item returned."""
    raw = json.dumps([created_at, saga_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Parse a cursor made by `encode_cursor`, with a clear error for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, saga_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return float(created_at), str(saga_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"invalid listing cursor {cursor!r}: pass back the cursor of the previous page"
        ) from exc


def check_limit(limit: int) -> int:
    """Listing page sizes are 1..1000."""
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be an integer from 1 to 1000, got {limit!r}")
    return limit


def is_terminal(status: SagaStatus) -> bool:
    """True for a finished status: one of `TERMINAL_STATUSES` (COMPLETED, COMPENSATED,
    FAILED, CANCELLED, REVERTED).

    Only a finished execution may be deleted, purged or given an expiry, and `wait`
    returns on any of them. Finished is not frozen: an execution may still be written
    (a late success recorded on a step) or leave the set (an operator retry of a FAILED
    one, the revert of a COMPLETED one, on request or by its parent's compensation), and
    is then unfinished again: no expiry, listed under its new status.
    """
    return status in TERMINAL_STATUSES
