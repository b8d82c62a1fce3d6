"""What a step returns, and how that becomes a stored output and compensation data.

Everything a saga stores or sends is JSON. `ensure_json` is the one gate: it
turns any value that cannot be encoded (an unsupported type, NaN, a cycle, too
deep, too many values) into a `StepOutputError` that names the value's owner, what
kind of value it is (the saga's input, a step's input or output, compensation data)
and the key path of the offending part, such as ``input['items'][2]['price']``.
"""

from __future__ import annotations

import json
from itertools import chain, pairwise
from typing import Any, NoReturn

from celery_saga.errors import PermanentFailure, SagaInputError, StepOutputError
from celery_saga.plain import to_plain

#: Marks a StepResponse that crossed the broker as plain JSON (see `__json__`).
WIRE_MARKER = "__celery_saga_step_response__"

#: Lists and dicts may nest this many levels deep in a stored or sent value (the
#: top-level container is level 1). Deeper values are refused before encoding, so
#: they fail clearly instead of hitting the interpreter's recursion limit in an
#: encoder or in a reader's JSON decoder.
MAX_DEPTH = 100

#: A stored or sent value may hold this many items in all (every element of every
#: list and dict, counted each time it is reached). It bounds the work of encoding
#: a value that shares one list many times over (which JSON would copy each time).
MAX_ITEMS = 5_000_000

_CONTAINERS = (dict, list, tuple)
_values = dict.values
_SHAPE_HINT = (
    "Return only dicts, lists, strings, numbers, booleans and None (or a Pydantic "
    "model / StepResponse of them)"
)
_SHOWN = 80
_PLAIN = "dicts, lists, strings, numbers, booleans and None"

#: The kinds of value `ensure_json` checks: the name key paths start with, and the fix.
KINDS: dict[str, tuple[str, str]] = {
    "saga input": (
        "input",
        f"Pass the saga only {_PLAIN}: convert other values first (a datetime with "
        ".isoformat(), a Decimal with str(), a set with list(), a Pydantic model with "
        ".model_dump(mode='json'))",
    ),
    "step input": (
        "input",
        f"A step's input is made from the saga's input and earlier steps' outputs by its "
        f"input mapping (input=, a transform): make that return only {_PLAIN}",
    ),
    "step output": ("output", _SHAPE_HINT),
    "compensation data": (
        "compensation_data",
        f"Give the compensation only {_PLAIN} (or a Pydantic model of them), e.g. "
        "StepResponse(output, compensation_data={...})",
    ),
    "saga output": (
        "output",
        f"The saga's output is made by its transforms or its @saga function's return "
        f"value from the context: make them return only {_PLAIN}",
    ),
    "external output": (
        "output",
        f"Pass complete_step() (or `celery saga complete --output`) only {_PLAIN}",
    ),
}


class StepResponse:
    """A step's return value that separates its output from its compensation data.

    `output` is merged into the saga context for later steps; `compensation_data`
    is what the step's compensation receives if the saga rolls back. Without
    compensation data, the output is used. Pydantic models are accepted for both.
    """

    __slots__ = ("compensation_data", "output")

    def __init__(self, output: Any = None, compensation_data: Any = None) -> None:
        self.output = to_plain(output)
        self.compensation_data = (
            self.output if compensation_data is None else to_plain(compensation_data)
        )

    @staticmethod
    def permanent_failure(message: str, compensation_data: Any = None) -> NoReturn:
        """Fail this step at once (no retries) and compensate it with `compensation_data`.

        Raises `PermanentFailure`; writing ``raise StepResponse.permanent_failure(...)``
        reads well and works the same.
        """
        raise PermanentFailure(message, compensation_data)

    def __json__(self) -> dict[str, Any]:
        """Plain JSON form, used by kombu when a step named by task name returns one."""
        return {WIRE_MARKER: 1, "output": self.output, "compensation_data": self.compensation_data}

    def __repr__(self) -> str:
        return f"StepResponse(output={self.output!r}, compensation_data={self.compensation_data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepResponse):
            return NotImplemented
        return (self.output, self.compensation_data) == (other.output, other.compensation_data)

    __hash__ = None  # type: ignore[assignment]


def normalize_result(value: Any, what: str | None = None) -> tuple[dict[str, Any], Any]:
    """Split what a step returned into (output, compensation data).

    A dict is both; a StepResponse says each; a Pydantic model is dumped to a dict;
    any other value becomes ``{"result": value}``; None becomes ``{}``. A value that
    cannot be turned into data (a Pydantic model whose serializer fails, a cycle)
    raises StepOutputError naming `what` (by default, the task being run).
    """
    try:
        if isinstance(value, dict) and value.get(WIRE_MARKER) == 1:
            value = StepResponse(value.get("output"), value.get("compensation_data"))
        if isinstance(value, StepResponse):
            output, compensation = value.output, value.compensation_data
        else:
            output = to_plain(value)
            compensation = output
    except StepOutputError:
        raise
    except Exception as exc:  # a model's own serializer: any error is the step's output's
        owner = what or _current_step_return()
        raise StepOutputError(
            f"{owner} could not be converted to JSON data ({_brief(exc)}). {_SHAPE_HINT}."
        ) from None
    if output is None:
        output = {}
    elif not isinstance(output, dict):
        output = {"result": output}
    return output, compensation


def _current_step_return() -> str:
    """Names the value the running task returned, for errors raised without a `what`."""
    from celery import current_task

    name = getattr(current_task._get_current_object(), "name", None)
    return f"the value task {name} returned" if name else "the step's return value"


def ensure_json(value: Any, what: str, kind: str | None = None) -> str:
    """Encode `value` as JSON, or raise StepOutputError naming `what`, the cause and the fix.

    The shape is checked first, without recursion: at most `MAX_DEPTH` levels of
    lists and dicts, at most `MAX_ITEMS` items, no list or dict inside itself.
    Then any encoder error (an unsupported type, NaN or infinity, an integer too
    long to print, a failing subclass) becomes StepOutputError too, so a value
    that cannot be stored never escapes as another exception.

    `kind` (a key of `KINDS`: "saga input", "step input", "step output",
    "compensation data", "saga output", "external output") starts the key path
    with the value's name (``input['items'][2]``) and gives the fix that fits it;
    a saga's input raises `SagaInputError`. Without it the path starts at ``[...]``
    and the fix is the one for a step's return value.
    """
    check_shape(value, what, kind)
    try:
        return json.dumps(value, allow_nan=False)
    except Exception as exc:
        raise _error(kind)(_encoding_error(value, what, exc, kind)) from None


def _root(kind: str | None) -> str:
    """The name a key path starts with for `kind` ("" without one)."""
    return KINDS[kind][0] if kind is not None else ""


def _error(kind: str | None) -> type[StepOutputError]:
    """The exception for a value of `kind` that cannot be JSON."""
    return SagaInputError if kind == "saga input" else StepOutputError


def check_shape(value: Any, what: str, kind: str | None = None) -> None:
    """Refuse a value nested over `MAX_DEPTH` levels, over `MAX_ITEMS` items, or circular.

    Walks the lists and dicts level by level, without recursion, and stops at the
    first level too deep: a value nested 100,000 levels costs about 100 steps.
    """
    if not isinstance(value, _CONTAINERS):
        return
    level: list[Any] = [value]
    depth = items = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise _error(kind)(_depth_error(value, what, kind))
        items += sum(map(len, level))
        if items > MAX_ITEMS:
            raise _error(kind)(
                f"{what} holds more than {MAX_ITEMS:,} items (counting a shared list each "
                "time it appears): keep large data elsewhere and return a reference to it."
            )
        members = chain.from_iterable(_values(c) if isinstance(c, dict) else c for c in level)
        level = [m for m in members if isinstance(m, _CONTAINERS)]


def _depth_error(value: Any, what: str, kind: str | None = None) -> str:
    """Why `value` is deeper than `MAX_DEPTH`: a cycle (and where), or plain depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    path: list[Any] = []  # the containers from the top down to the one being looked at
    while stack:
        container, depth = stack.pop()
        del path[depth - 1 :]
        path.append(container)
        if depth > MAX_DEPTH:
            repeat = _first_repeat(path)
            if repeat is not None:
                return (
                    f"{what} contains itself: the list or dict at "
                    f"{_location(path[: repeat + 1], _root(kind))} is one that holds it, and "
                    "JSON cannot encode a circular reference. Use a copy of the data without "
                    "the cycle."
                )
            return (
                f"{what} nests lists and dicts more than {MAX_DEPTH} levels deep (at "
                f"{_location(path[:6], _root(kind))}...): keep stored data flatter, or keep it "
                "elsewhere and pass a reference to it."
            )
        members = _values(container) if isinstance(container, dict) else container
        stack.extend((m, depth + 1) for m in members if isinstance(m, _CONTAINERS))
    return f"{what} nests lists and dicts more than {MAX_DEPTH} levels deep."


def _first_repeat(path: list[Any]) -> int | None:
    """The index of the first container in `path` that already appears above it."""
    seen: set[int] = set()
    for index, container in enumerate(path):
        if id(container) in seen:
            return index
        seen.add(id(container))
    return None


def _location(path: list[Any], root: str = "") -> str:
    """Where the last container of `path` sits, as subscripts from `root` (``input['a'][0]``)."""
    parts = []
    for parent, child in pairwise(path):
        pairs = parent.items() if isinstance(parent, dict) else enumerate(parent)
        key = next((k for k, v in pairs if v is child), "?")
        parts.append(f"[{_shown(key)}]")
    if not parts:
        return f"{root} itself" if root else "the top level"
    return root + "".join(parts)


def _encoding_error(value: Any, what: str, exc: Exception, kind: str | None = None) -> str:
    """The message for a value json refused, pointing at the first part it cannot encode."""
    hint = KINDS[kind][1] if kind is not None else _SHAPE_HINT
    try:
        found = _first_unencodable(value, _root(kind))
    except Exception:  # a container subclass that fails again: report json's own error
        found = None
    if found is None:
        return f"{what} could not be encoded as JSON ({_brief(exc)}). {hint}."
    where, bad, role = found
    type_name = type(bad).__name__
    if isinstance(bad, float):
        return (
            f"{what} is not JSON-serializable: found a {role} of type float ({bad!r}) at "
            f"{where}; JSON has no NaN or infinity: use None or a string instead."
        )
    return (
        f"{what} is not JSON-serializable: found a {role} of type {type_name} at {where} "
        f"({_brief(exc)}). {hint}."
    )


def _first_unencodable(value: Any, root: str = "") -> tuple[str, Any, str] | None:
    """(location, the value or key, "value" or "key") of the first thing json refuses.

    Locations are key paths from `root` (``input['a'][0]``). Only called after
    `check_shape` passed, so the walk is bounded.
    """
    top = f"{root} itself" if root else "the top level"
    stack: list[tuple[str, Any]] = [(top, value)]
    while stack:
        where, item = stack.pop()
        prefix = root if where == top else where
        if isinstance(item, dict):
            children = []
            for key, child in item.items():
                if not _encodable_scalar(key):
                    return where, key, "key"
                children.append((f"{prefix}[{_shown(key)}]", child))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(f"{prefix}[{i}]", c) for i, c in enumerate(item)]))
        elif not _encodable_scalar(item):
            return where, item, "value"
    return None


def _encodable_scalar(value: Any) -> bool:
    """True for None, a bool, a string, an integer or a finite float."""
    if value is None or isinstance(value, str | int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    return False


def _shown(value: Any) -> str:
    """A short repr of `value` for an error message."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


def _brief(exc: BaseException) -> str:
    """``Type: message`` of an exception, cut short for an error message."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else f"{text[:297]}..."
