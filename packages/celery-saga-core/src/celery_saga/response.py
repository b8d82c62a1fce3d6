"""What a step returns, and how that becomes a stored output and compensation data."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from celery_saga.errors import PermanentFailure, StepOutputError

#: Marks a StepResponse that crossed the broker as plain JSON (see `__json__`).
WIRE_MARKER = "__celery_saga_step_response__"


def is_pydantic_model(obj: Any) -> bool:
    """True for a Pydantic v2 model instance (checked without importing Pydantic)."""
    return hasattr(obj, "model_dump") and hasattr(type(obj), "model_fields")


def to_plain(value: Any) -> Any:
    """Turn a Pydantic model into its JSON-ready dict; leave anything else as it is."""
    if value is not None and is_pydantic_model(value):
        return value.model_dump(mode="json")
    return value


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


def normalize_result(value: Any) -> tuple[dict[str, Any], Any]:
    """Split what a step returned into (output, compensation data).

    A dict is both; a StepResponse says each; a Pydantic model is dumped to a dict;
    any other value becomes ``{"result": value}``; None becomes ``{}``.
    """
    if isinstance(value, dict) and value.get(WIRE_MARKER) == 1:
        value = StepResponse(value.get("output"), value.get("compensation_data"))
    if isinstance(value, StepResponse):
        output, compensation = value.output, value.compensation_data
    else:
        output = to_plain(value)
        compensation = output
    if output is None:
        output = {}
    elif not isinstance(output, dict):
        output = {"result": output}
    return output, compensation


def ensure_json(value: Any, what: str) -> str:
    """Encode `value` as JSON or raise StepOutputError naming `what` and the bad type."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        bad = _first_unserializable(value)
        raise StepOutputError(
            f"{what} is not JSON-serializable: found a value of type "
            f"{type(bad).__name__} ({exc}). Return only dicts, lists, strings, "
            "numbers, booleans and None (or a Pydantic model / StepResponse of them)."
        ) from None


def _first_unserializable(value: Any) -> Any:
    """Find the innermost value json cannot encode, for the error message."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                return key
            found = _first_unserializable(item)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for item in value:
            found = _first_unserializable(item)
            if found is not None:
                return found
        return None
    if value is None or isinstance(value, str | int | bool):
        return None
    if isinstance(value, float):
        return value if value != value or value in (float("inf"), float("-inf")) else None
    return value
