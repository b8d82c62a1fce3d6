"""Plain data from what users hand us: Pydantic models become JSON-ready dicts.

Kept apart from `response` so the error classes (a `PermanentFailure` carries
compensation data) can use it without importing the rest of the response layer.
"""

from __future__ import annotations

from typing import Any


def is_pydantic_model(obj: Any) -> bool:
    """True for a Pydantic v2 model instance (checked without importing Pydantic)."""
    return hasattr(obj, "model_dump") and hasattr(type(obj), "model_fields")


def to_plain(value: Any) -> Any:
    """Turn a Pydantic model into its JSON-ready dict; leave anything else as it is."""
    if value is not None and is_pydantic_model(value):
        return value.model_dump(mode="json")
    return value
