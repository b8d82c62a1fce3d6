"""The fields of one execution's hash: their names, and the record they make.

An execution is one hash (see keys.py). Its fields:

- ``h``: the immutable header, one JSON object (saga name, definition hash, record
  schema; the idempotency key, queue and parent link only when set; the saga id is in
  the key's name).
- ``h:<field>``: every other execution field that is set, as raw JSON (a status is
  the JSON text ``"running"``, quotes included).
- ``s:<i>``: step *i*, one JSON object whose members are named by short codes
  (`STEP_CODES`; a field without a code by its own name). It starts with the step's
  state, ``{"s":"<status>","a":<attempt>`` and ``,"ca":<comp_attempt>`` unless 0 (its
  *head*, which the step scripts read with one anchored pattern); a write rewrites the
  head and appends the other members it changes to the object's text (a member
  written again is written again: the last one counts). So no script decodes a step
  or re-encodes what a client wrote (Lua's cjson keeps 14 significant digits: it would
  round user data and times that must compare exactly). In an object with only
  numbers, strings and literals for members, a member written again replaces the
  earlier one (there, ``,"<code>":`` can only be a member's start). A write's
  started_at (``"sa"``, `STARTED`) comes first among its members, so a step's start
  puts it right after the head, where the fast write that ends the attempt replaces
  it in place (`fastpath`); that write appends its other members without cutting.
- ``s:<i>:<code>``: the fields of `APART` when set (lease owner and expiry, late
  successes, history): the step scripts compare or merge them, or they are written
  whole, so they live in fields of their own, deleted when set to null.
- ``x`` (`EXTRAS`): ``0`` while the execution has no keys beside its hash (counters, a
  children index), ``1`` once it may have: the first count and the create of a child
  set it. The write that finishes the execution tidies those keys only when it is not
  ``0``; an execution an earlier version created has none, and its finish looks.

Counters (`update_step(count_in=...)`) live in a hash of their own while the execution
runs (`Keys.counters`); the write that finishes it deletes them. A finished execution
is then its header, its execution fields and one field per step, as it was written.
A stage of one step is counted without its counter: the write that completes it says
so (`StartNext.check` is that step alone and `get_at` is 1), and it is that stage's
only write that counts (the others the step could get are refused once it has left
PENDING and RUNNING), so its count is 1.

Defaults are not stored (absent: the default), and the object abbreviates: an output
that is also the compensation data is written once (``"oc"``), and a task id that
`celery_saga.ids.step_task_id` gives is the number of its attempt (``"i": 1``).
`decode` reads any mix of these forms, and the layout before this one (steps as one
object with long names, plus ``s:<i>:<name>`` fields for user data and leases), which
the step scripts turn into this one when they write such a step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any

from celery_saga.backends.helpers import compact_json
from celery_saga.ids import step_task_id
from celery_saga.models import SagaExecution, StepKind, StepRecord, StepStatus

#: Step field -> the code that names it in the hash. A field added to `StepRecord`
#: later is named by its own name.
STEP_CODES: dict[str, str] = {
    "task_name": "t",
    "stage": "g",
    "compensation_task_name": "ct",
    "no_compensation": "nc",
    "kind": "k",
    "status": "s",
    "attempt": "a",
    "task_id": "i",
    "retries": "r",
    "seq": "q",
    "started_at": "sa",
    "finished_at": "fa",
    "output": "o",
    "compensation_data": "cd",
    "error": "e",
    "comp_attempt": "ca",
    "comp_task_id": "ci",
    "comp_started_at": "cs",
    "comp_finished_at": "cf",
    "comp_error": "ce",
    "lease_owner": "lo",
    "lease_expires_at": "le",
    "sent_at": "st",
    "sends": "n",
    "late": "l",
    "child_id": "ch",
    "worker": "w",
    "comp_worker": "cw",
    "history": "hi",
}
#: Code -> step field.
STEP_NAMES: dict[str, str] = {code: name for name, code in STEP_CODES.items()}
#: Codes of the step's state, at the head of its object.
HEAD = ("s", "a", "ca")
#: Codes of the fields kept apart from the step's object when set (``s:<i>:<code>``).
APART = ("lo", "le", "l", "hi")
#: Raw JSON texts of the fields whose default is not null (absent: the default).
DEFAULT_TEXTS: dict[str, str] = {
    "a": "0",
    "r": "0",
    "ca": "0",
    "n": "0",
    "nc": "false",
    "k": json.dumps(StepKind.TASK.value),
}
#: The member of an output that is also the compensation data.
SHARED_OUTPUT = "oc"
#: The code of started_at, which a step's start writes first after the head (and a new
#: execution's started step has there), so that the end of the attempt, which writes it
#: again, replaces it in place (`fastpath`).
STARTED = "sa"
#: Codes whose null is always written into the object: they take part in abbreviations.
_ALWAYS = frozenset({"o", "cd", "i", "ci"})
#: The fields that records stored before this layout kept apart from the step's
#: object, under their own names (``s:<i>:output``...).
LEGACY_RAW_FIELDS = (
    "output",
    "compensation_data",
    "late",
    "lease_owner",
    "lease_expires_at",
    "sent_at",
    "history",
)
#: Header fields kept in ``h``; the optional ones only when set. The saga id is the
#: key's (records of the layout before this one have it in ``h`` too).
HEADER_FIELDS = ("saga_name", "definition_hash", "schema")
#: The field that says whether an execution may have keys beside its hash (see above).
EXTRAS = "x"
OPTIONAL_HEADER_FIELDS = ("idempotency_key", "queue", "parent_id", "parent_step")


#: Execution fields that are not ``h:<field>`` fields.
_NOT_FIELDS = frozenset({"saga_id", *OPTIONAL_HEADER_FIELDS})


def dumps(value: Any) -> str:
    """Compact JSON text of a value (enum members as their values)."""
    return compact_json(value)


def code(name: str) -> str:
    """The code of a step field (its own name when it has none)."""
    return STEP_CODES.get(name, name)


def raw(name: str, value: Any) -> str:
    """The stored text of a step field's value.

    ``late`` keeps each entry's values as JSON texts (``{"<attempt>": {"<key>": "<JSON
    text>"}}``), so the record_late script merges entries with cjson without rounding
    any number in them.
    """
    if name == "late" and isinstance(value, Mapping):
        value = {
            str(n): (
                {str(k): dumps(v) for k, v in entry.items()}
                if isinstance(entry, Mapping)
                else entry
            )
            for n, entry in value.items()
        }
    return dumps(value)


#: A marker for an absent change (None is a value a change may set).
_ABSENT = object()
#: The step fields an output shared with the compensation data is written as: their codes.
_OUTPUTS = {name: STEP_CODES[name] for name in ("output", "compensation_data")}
#: (task id code, attempt code, compensation?) of the task ids a step object abbreviates.
_TASK_IDS = (("i", "a", False), ("ci", "ca", True))


@functools.lru_cache(maxsize=256)
def member_start(key: str) -> str:
    """``,"<key>":``, the start of a member of a step object (made once per code)."""
    return f",{json.dumps(key)}:"


@functools.lru_cache(maxsize=64)
def quoted(status: str) -> str:
    """A status name as a JSON string (made once per name)."""
    return json.dumps(status)


_STARTED = member_start(STARTED)


@functools.lru_cache(maxsize=64)
def _head_value(text: str) -> Any:
    """The value of a head field's JSON text (a status name or a number)."""
    return int(text) if text.isdigit() else json.loads(text)


class StepChanges:
    """One step's changes as the step scripts write them (see `args`)."""

    __slots__ = ("apart", "deleted", "head", "members", "nulls", "started", "starts")

    def __init__(self, saga_id: str, index: int, changes: Mapping[str, Any]) -> None:
        texts: dict[str, str] = {}
        # An output that is also the compensation data (the same object) is encoded once.
        shared = changes.get("output", _ABSENT) is changes.get("compensation_data", _ABSENT)
        shared_text: str | None = None
        for name, value in changes.items():
            if shared and name in _OUTPUTS:
                if shared_text is None:
                    shared_text = dumps(value)
                texts[_OUTPUTS[name]] = shared_text
            else:
                texts[STEP_CODES.get(name, name)] = raw(name, value)
        output = texts.get("o")
        if output is not None and output != "null" and texts.get("cd") == output:
            del texts["o"], texts["cd"]
            texts[SHARED_OUTPUT] = output
        for task_code, attempt_code, compensation in _TASK_IDS:
            task_id, attempt = changes.get(STEP_NAMES[task_code]), texts.get(attempt_code)
            if (
                isinstance(task_id, str)
                and attempt is not None
                and attempt.isdigit()
                and task_id == step_task_id(saga_id, index, int(attempt), compensation=compensation)
            ):
                texts[task_code] = attempt
        #: The new status (its name), attempt and comp_attempt ('' each: unchanged).
        self.head = [_head_value(texts.pop(key)) if key in texts else "" for key in HEAD]
        #: Hash field, raw JSON pairs of the fields apart that are set.
        self.apart: list[str] = []
        deleted: list[str] = []
        members: list[str] = []
        starts: list[str] = []
        nulls: list[str] = []
        if STARTED in texts:  # first: where a step's start puts it (see `STARTED`)
            texts = {STARTED: texts.pop(STARTED), **texts}
        for key, text in texts.items():
            if key in APART:
                if text == "null":
                    deleted.append(f"s:{index}:{key}")
                else:
                    self.apart += [f"s:{index}:{key}", text]
                continue
            start = member_start(key)
            if text == "null" and key not in _ALWAYS:
                nulls.append(key)
            else:
                members.append(start + text)
            starts.append(start)
        #: The starts (``,"<code>":``) of `members` and of the members set to null, space
        #: separated: an earlier member with one is cut from an object that holds no
        #: object or array (there it can only be a member's start).
        self.starts = " ".join(starts)
        #: The fields apart set to null (deleted), space separated.
        self.deleted = " ".join(deleted)
        #: The members to append to the step's object (``,"<code>":<JSON>...``).
        self.members = "".join(members)
        #: The length of the started_at member at the start of `members` (0: none).
        self.started = len(members[0]) if members and members[0].startswith(_STARTED) else 0
        #: Codes set to null: their members are cut, or a null appended when the object
        #: may have them (absent is null).
        self.nulls = " ".join(nulls)

    def args(self) -> list[Any]:
        """The step's block of UPDATE_STEP's ARGV."""
        block = [*self.head, len(self.apart) // 2, *self.apart]
        return [*block, self.deleted, self.members, self.starts, self.nulls]


def step_head(status: str, attempt: int, comp_attempt: int) -> str:
    """The head of a step object (without its closing brace)."""
    text = f'{{"s":{quoted(status)},"a":{int(attempt)}'
    return f'{text},"ca":{int(comp_attempt)}' if comp_attempt else text


def _is_default(name: str, value: Any) -> bool:
    if value is None:
        return True
    text = DEFAULT_TEXTS.get(code(name))
    return text is not None and dumps(value) == text


def encode(execution: SagaExecution) -> list[str]:
    """The hash fields of a new execution, as field, value pairs (every step open)."""
    header = execution.header_dict()
    head = {k: header[k] for k in HEADER_FIELDS}
    head.update((k, header[k]) for k in OPTIONAL_HEADER_FIELDS if header[k] is not None)
    fields = ["h", dumps(head), EXTRAS, "0"]
    for name, value in header.items():
        if name not in head and name not in _NOT_FIELDS and value is not None:
            fields += [f"h:{name}", dumps(value)]
    for step in execution.steps:
        if all(_same(getattr(step, name), value) for name, value in _UNTOUCHED):
            key = tuple(getattr(step, name) for name in _DESCRIPTION)
            found = _untouched.get(key)
            if found is None:
                found = _step_fields(execution.saga_id, step)
                if len(_untouched) < _UNTOUCHED_KEPT:
                    _untouched[key] = found
            fields += found
        else:
            fields += _step_fields(execution.saga_id, step)
    return fields


def _step_fields(saga_id: str, step: StepRecord) -> list[str]:
    """One step's hash fields, as field, value pairs."""
    data = step.to_dict()
    del data["index"]
    state = {name: data.pop(name) for name in ("status", "attempt", "comp_attempt")}
    kept = {name: value for name, value in data.items() if not _is_default(name, value)}
    # The state is the head's; given with the rest, it abbreviates the task ids.
    write = StepChanges(saga_id, step.index, {**state, **kept})
    start = step_head(state["status"], state["attempt"], state["comp_attempt"])
    return [f"s:{step.index}", start + write.members + "}", *write.apart]


#: What describes a step (from its definition); every other field of a step no one has
#: run yet holds its default (`_UNTOUCHED`), so its fields depend on these alone and
#: `encode` makes them once per process (at most `_UNTOUCHED_KEPT` descriptions).
_DESCRIPTION = ("index", "task_name", "stage", "compensation_task_name", "no_compensation", "kind")
_UNTOUCHED = tuple(
    (f.name, f.default) for f in dataclasses.fields(StepRecord) if f.name not in _DESCRIPTION
)
_UNTOUCHED_KEPT = 4096
_untouched: dict[tuple[Any, ...], list[str]] = {}


def _same(value: Any, default: Any) -> bool:
    """Whether a field holds its default: the same object, or an equal one of its type."""
    return value is default or (type(value) is type(default) and value == default)


def _members(text: str) -> list[tuple[str, Any]]:
    """The members of a JSON object's text in order, repeated ones included."""
    top: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        top[:] = [pairs]  # the outermost object closes last
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return top[0] if top else []


def _apply(data: dict[str, Any], saga_id: str, index: int, key: str, value: Any) -> None:
    """Set one stored member (a code, or a long name of an older layout) on a step dict."""
    if key == SHARED_OUTPUT:
        data["output"] = data["compensation_data"] = value
    elif key in ("i", "ci") and isinstance(value, int) and not isinstance(value, bool):
        name = STEP_NAMES[key]
        data[name] = step_task_id(saga_id, index, value, compensation=key == "ci")
    else:
        data[STEP_NAMES.get(key, key)] = value


def _step(saga_id: str, index: int, stored: str, fields: dict[str, str]) -> dict[str, Any]:
    """One step's record from its object and its own fields (which win)."""
    data: dict[str, Any] = {}
    for key, value in _members(stored):
        _apply(data, saga_id, index, key, value)
    for key, text in fields.items():
        _apply(data, saga_id, index, key, json.loads(text))
    data["index"] = index
    if isinstance(data.get("late"), dict):
        data["late"] = {
            n: (
                {k: json.loads(v) if isinstance(v, str) else v for k, v in entry.items()}
                if isinstance(entry, dict)
                else entry
            )
            for n, entry in data["late"].items()
        }
    data.setdefault("status", StepStatus.PENDING.value)
    return data


def decode(saga_id: str, raw_fields: Mapping[str, str] | list[str]) -> SagaExecution | None:
    """Execution `saga_id` from its hash's fields (None when there are none)."""
    if isinstance(raw_fields, list):  # HGETALL as returned inside a script reply
        raw_fields = dict(zip(raw_fields[::2], raw_fields[1::2], strict=True))
    if not raw_fields or "h:status" not in raw_fields:
        return None
    header: dict[str, Any] = json.loads(raw_fields["h"])
    header["saga_id"] = saga_id
    objects: dict[int, str] = {}
    fields: dict[int, dict[str, str]] = {}
    for field, value in raw_fields.items():
        first = field[0]
        if first == "s":
            _, index, *name = field.split(":", 2)
            if name:
                fields.setdefault(int(index), {})[name[0]] = value
            else:
                objects[int(index)] = value
        elif first == "h" and len(field) > 1:
            header[field[2:]] = json.loads(value)
    header["steps"] = [_step(saga_id, i, objects[i], fields.get(i, {})) for i in sorted(objects)]
    return SagaExecution.from_dict(header)
