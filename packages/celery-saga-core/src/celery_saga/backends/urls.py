"""What every store does with its URL: take out its own options, read flags and durations.

A store URL is the driver's URL plus options of the store itself in the query string
(``?prefix=saga:&ttl=86400``). Stores share these helpers so that every one accepts
the same spellings and says the same clear thing about a bad value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from urllib.parse import unquote_plus

#: Spellings of a true and a false flag in a URL (case-insensitive).
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def split_options(url: str, names: Collection[str]) -> tuple[str, dict[str, str]]:
    """Split the store's own query options (`names`) off `url`.

    Returns the URL without them, every other piece of its query kept exactly as
    written (drivers parse their own options), and the store's options, decoded;
    a repeated option keeps its last value.
    """
    location, has_query, query = url.partition("?")
    options: dict[str, str] = {}
    kept: list[str] = []
    for piece in re.split(r"[&;]", query) if has_query else []:
        if not piece:
            continue
        key, _, value = piece.partition("=")
        name = unquote_plus(key)
        if name in names:
            options[name] = unquote_plus(value)
        else:
            kept.append(piece)
    if not kept:
        return location, options
    delimiter = ";" if ";" in query and "&" not in query else "&"
    return f"{location}?{delimiter.join(kept)}", options


def parse_flag(name: str, value: str | bool | None, *, auto: bool = False) -> bool | None:
    """A flag option as a bool (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``).

    None (not given) stays None; with `auto`, so does ``auto`` or an empty value.
    """
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if auto and text in ("", "auto"):
        return None
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    choices = "true, false or auto" if auto else "true or false"
    raise ValueError(f"the store option {name} must be {choices}, got {value!r}")


def parse_seconds(name: str, value: str | float | None) -> float | None:
    """A duration option in seconds: a finite number, zero or more (None: not given)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"the store option {name} must be a number of seconds, zero or more, got {value!r}"
        )
    return seconds
