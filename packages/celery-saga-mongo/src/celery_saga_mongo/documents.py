"""How an execution is laid out in its MongoDB document, and how values are checked.

One document per execution::

    {_id: <saga_id>, saga_name, status, input, idempotency_key, definition_hash, queue,
     output, error, failed_step, created_at, updated_at, finished_at, deadline_at,
     cancelled_at, parent_id, parent_step, revert_reason, trace_context, schema,
     steps: [{index, task_name, stage, kind, ..., status, attempt, output, child_id, ...},
             ...],
     counters: {<name>: <int>, ...}}

``steps[i]`` is the step whose ``index`` is ``i``, so a step write addresses
``steps.<i>.<field>`` and touches nothing else. User payloads (the saga's
``input`` and ``output``, a step's ``output`` and ``compensation_data``; also the
saga's ``trace_context`` and a step's ``history``) are kept
as JSON text: BSON cannot hold integers above 2**63-1, and keys containing ``.``
or starting with ``$`` are awkward or refused, so storing the JSON text is the
only way to give back exactly what was written. Everything else (statuses,
counters, times, names) is stored natively so it can be filtered and indexed;
the execution's times are doubles (or null), checked to be numbers before they
are sent, and so are the step times that conditions compare (``lease_expires_at``,
``sent_at``). A field missing from an older document reads back as its default, so
documents written before ``deadline_at``, ``cancelled_at`` or the lease fields
(``lease_owner``, ``lease_expires_at``, ``sent_at``, ``sends``, ``late``) existed
need no migration; nor do documents written before saga composition (record schema
1): they read back as top-level executions (no ``parent_id``, ``parent_step`` or
``revert_reason``) of task steps (``kind`` "task", no ``child_id``), nor those
written before a step's ``worker``, ``comp_worker`` and ``history`` and an
execution's ``trace_context`` (all None when missing).

A step's late successes (``late``) are an object keyed by attempt number (a string),
so one entry is addressed as ``steps.<i>.late.<attempt>`` and created or moved on by
one conditional update. In an entry, ``state`` is stored natively (the update's
filter compares it); every other value may carry user data and is JSON text, like a
payload. A step without late successes stores no ``late`` field at all (not null:
MongoDB cannot create ``late.<attempt>`` inside a null).

Values that reach a query filter (saga ids, idempotency keys, saga names) are
checked here to be plain strings: a dict such as ``{"$ne": None}`` would
otherwise be read by the server as an operator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from celery_saga.backends.base import plain_value
from celery_saga.errors import InvalidSagaId
from celery_saga.models import SagaExecution, StepRecord

#: Execution fields kept as JSON text (the trace context too: its keys are not ours).
SAGA_PAYLOAD_FIELDS = frozenset({"input", "output", "trace_context"})
#: Step fields kept as JSON text (the history of attempts too: it carries error texts,
#: and times that must come back exact, and no query looks inside it).
STEP_PAYLOAD_FIELDS = frozenset({"output", "compensation_data", "history"})
#: Execution fields holding a time (seconds since the epoch): stored as doubles, or null.
SAGA_TIME_FIELDS = frozenset(
    {"created_at", "updated_at", "finished_at", "deadline_at", "cancelled_at"}
)
#: Step times that conditions compare: stored as doubles, or null.
STEP_TIME_FIELDS = frozenset({"lease_expires_at", "sent_at"})
#: The field of a late-success entry kept natively (filters compare it).
LATE_STATE = "state"
#: Fields a listing reads (the execution without its steps).
SUMMARY_PROJECTION = {
    "_id": 1,
    "saga_name": 1,
    "status": 1,
    "created_at": 1,
    "updated_at": 1,
    "finished_at": 1,
    "idempotency_key": 1,
    "error": 1,
    "parent_id": 1,
}
#: Longest saga id, saga name or idempotency key accepted (index keys stay small).
MAX_TEXT = 1024
#: Longest counter name accepted.
MAX_COUNTER_NAME = 200


# -- payloads ----------------------------------------------------------------------------------


def dump_payload(value: Any, what: str) -> str | None:
    """JSON text of a user payload (None stays None, so an unset field reads as null)."""
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} must be JSON-serializable to be stored in MongoDB: {exc} "
            "(return plain dicts, lists, strings, numbers, booleans or None)"
        ) from exc


def load_payload(value: Any) -> Any:
    """Parse a payload written by `dump_payload`."""
    if value is None:
        return None
    if not isinstance(value, str):
        # Written natively by some other tool: give it back as it is.
        return value
    return json.loads(value)


def encode_step_value(name: str, value: Any) -> Any:
    """A step field's value as stored (enums by value, payloads as JSON text)."""
    if name in STEP_PAYLOAD_FIELDS:
        return dump_payload(value, f"step {name}")
    if name in STEP_TIME_FIELDS and value is not None:
        return check_number(value, name)
    if name == "late":
        return encode_late(value)
    return plain_value(value)


def decode_step_value(name: str, value: Any) -> Any:
    """A stored step field's value as `StepRecord.from_dict` reads it."""
    if name in STEP_PAYLOAD_FIELDS:
        return load_payload(value)
    if name == "late":
        return decode_late(value)
    return value


# -- late successes ----------------------------------------------------------------------------


def encode_late_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A late-success entry (or the changes merged into one) as stored.

    ``state`` stays native; every other value becomes JSON text. Keys become part of
    a field path (``steps.<i>.late.<attempt>.<key>``), so they are checked.
    """
    if not isinstance(entry, Mapping):
        raise TypeError(f"a late-success entry must be a dict, got {entry!r}")
    stored: dict[str, Any] = {}
    for key, value in entry.items():
        check_path_key(key, "late-success field")
        if key == LATE_STATE:
            stored[key] = plain_value(value)
        else:
            stored[key] = dump_payload(plain_value(value), f"late-success {key}")
    return stored


def encode_late(late: Any) -> dict[str, Any] | None:
    """A step's whole ``late`` field as stored: ``{attempt: entry}``, or None."""
    if late is None:
        return None
    if not isinstance(late, Mapping):
        raise TypeError(f"a step's late field must be a dict or None, got {late!r}")
    return {
        check_path_key(attempt, "late-success attempt"): encode_late_entry(entry)
        for attempt, entry in late.items()
    }


def decode_late(stored: Any) -> Any:
    """Read back what `encode_late` stored."""
    if not isinstance(stored, Mapping):
        return stored  # None (or a value no celery-saga writes, given back as it is)
    return {
        attempt: (
            {k: v if k == LATE_STATE else load_payload(v) for k, v in entry.items()}
            if isinstance(entry, Mapping)
            else entry
        )
        for attempt, entry in stored.items()
    }


def encode_saga_value(name: str, value: Any) -> Any:
    """An execution field's value as stored: enums by value, payloads as JSON, times as floats."""
    if name in SAGA_PAYLOAD_FIELDS:
        return dump_payload(value, f"saga {name}")
    if name in SAGA_TIME_FIELDS and value is not None:
        return check_number(value, name)
    return plain_value(value)


# -- whole executions --------------------------------------------------------------------------


def execution_document(execution: SagaExecution) -> dict[str, Any]:
    """The document that stores `execution`, steps ordered so ``steps[i].index == i``."""
    header = execution.header_dict()
    document: dict[str, Any] = {"_id": header.pop("saga_id")}
    for name, value in header.items():
        document[name] = encode_saga_value(name, value)
    steps = sorted(execution.steps, key=lambda s: s.index)
    indexes = [s.index for s in steps]
    if indexes != list(range(len(steps))):
        raise ValueError(
            f"saga {execution.saga_id}: MongoSagaBackend keeps steps by position, so step "
            f"indexes must be 0..{len(steps) - 1} without gaps or repeats; got {indexes}"
        )
    document["steps"] = [step_document(step) for step in steps]
    document["counters"] = {}
    return document


def step_document(step: StepRecord) -> dict[str, Any]:
    """One element of the ``steps`` array (without ``late`` while it is None)."""
    return {
        name: encode_step_value(name, value)
        for name, value in step.to_dict().items()
        if not (name == "late" and value is None)
    }


def execution_from_document(document: Mapping[str, Any]) -> SagaExecution:
    """Rebuild the execution a document stores (refusing newer schema versions)."""
    data: dict[str, Any] = {}
    for name, value in document.items():
        if name in ("_id", "steps", "counters"):
            continue
        data[name] = load_payload(value) if name in SAGA_PAYLOAD_FIELDS else value
    data["saga_id"] = document["_id"]
    data["steps"] = [
        {name: decode_step_value(name, value) for name, value in step.items()}
        for step in document.get("steps") or []
    ]
    return SagaExecution.from_dict(data)


def summary_dict(document: Mapping[str, Any]) -> dict[str, Any]:
    """The header fields of a listing row, in the shape `SagaSummary.from_dict` reads."""
    data = {name: document.get(name) for name in SUMMARY_PROJECTION if name != "_id"}
    data["saga_id"] = document["_id"]
    return data


# -- values that reach a filter ----------------------------------------------------------------


def _text_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    if not value:
        return "it is empty"
    if len(value) > MAX_TEXT:
        return f"it is longer than {MAX_TEXT} characters"
    if value.startswith("$"):
        return "it starts with '$' (MongoDB would read it as an operator or field path)"
    if "\x00" in value:
        return "it contains a NUL character"
    return None


def check_saga_id(value: object) -> str:
    """Return `value` if it can be bound as a saga id; raise `InvalidSagaId` otherwise."""
    problem = _text_problem(value)
    if problem is not None:
        raise InvalidSagaId(f"{value!r} is not a usable saga id: {problem}")
    assert isinstance(value, str)
    return value


def check_text(value: object, what: str) -> str:
    """Return `value` if it is a plain string usable as a filter value; ValueError otherwise."""
    problem = _text_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {value!r} cannot be used: {problem}")
    assert isinstance(value, str)
    return value


def check_path_key(value: object, what: str) -> str:
    """A key that becomes one component of a field path: a string without ``.``,
    NUL or a leading ``$``."""
    if (
        not isinstance(value, str)
        or not value
        or "." in value
        or "\x00" in value
        or value.startswith("$")
    ):
        raise ValueError(
            f"{what} {value!r} cannot be stored: use a non-empty string without '.', NUL "
            "or a leading '$'"
        )
    return value


def check_number(value: object, what: str) -> float:
    """Return `value` as a float if it is a real number (not a bool, dict or string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number (seconds since the epoch), got {value!r}")
    return float(value)


def check_step_index(value: object) -> int:
    """A step index is a non-negative int; it becomes part of a field path."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a step index must be an int, got {value!r}")
    if value < 0:
        raise KeyError(f"no step {value}: step indexes start at 0")
    return value


def counter_field(name: object) -> str:
    """The dotted path of counter `name` inside ``counters``.

    Counter names are free text (``"stage:1"``); ``%``, ``.`` and ``$`` are
    percent-encoded so a name can never split the path or read as an operator.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_COUNTER_NAME or "\x00" in name:
        raise ValueError(
            f"count_in must be a non-empty string of at most {MAX_COUNTER_NAME} characters "
            f"without NUL, got {name!r}"
        )
    escaped = name.replace("%", "%25").replace(".", "%2E").replace("$", "%24")
    return f"counters.{escaped}"
