"""Bodies of the benchmark's step tasks, shared by every contender's Celery app.

This module imports neither this project nor celery-saga 0.1.1, so both the
harness's apps (`bench_app`) and the original package's app (`orig_app`, which
runs in a venv of its own) register exactly the same work.

- ``noop``: the five steps of W1, W3, W4 and W5; returns an empty output.
- ``fan``: the five steps of W2 (one step, then a parallel group of four). Each
  adds ``"<i>:<n>"`` to the Redis set named by its ``ran`` argument, proving it
  ran, and returns ``{"out<n>": i}``, the output its saga record must keep.
- ``fail``: the last step of W9's compensated saga; always raises, so the steps
  before it are compensated.
"""

from __future__ import annotations

import os
from typing import Any

import redis

#: Where the ``fan`` steps record that they ran (the harness reads the sets back).
MARKS_URL = os.environ.get("BENCH_MARKS_URL", "redis://127.0.0.1:6379/5")

_marks: list[redis.Redis] = []


def _client() -> redis.Redis:
    """One client per process, made after the prefork worker forked its children."""
    if not _marks:
        _marks.append(redis.Redis.from_url(MARKS_URL))
    return _marks[0]


def noop(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A step that does nothing and outputs nothing."""
    return {}


def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A step that always fails: its saga compensates the steps before it."""
    raise RuntimeError("this benchmark step fails on purpose: its saga compensates")


def fan(n: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Step `n` of the fan-out saga: record that it ran, output ``out<n>``."""
    i = kwargs["i"]
    _client().sadd(kwargs["ran"], f"{i}:{n}")
    return {f"out{n}": i}


def marker(i: int, n: int) -> str:
    """The member `fan` adds for saga `i`, step `n`."""
    return f"{i}:{n}"
