"""`RetryPolicy`: how often, how soon and on which errors a step (or compensation) retries.

A step's own Celery options (``autoretry_for``, ``max_retries``, ``retry_backoff``...)
apply as usual, since each step is its own task. A policy given in the saga
definition works on top of them, at the saga level: after the task has failed
for good, the step is dispatched again as a new attempt (with its own task id),
so every try shows in the saga record, and it works for steps named by task
name too. `PermanentFailure` is never retried.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Retry up to `max_retries` times with exponential backoff (and full jitter).

    The delay before retry *n* (1-based) is ``min(backoff_max, backoff * 2 ** (n - 1))``,
    drawn uniformly from ``[0, that]`` when `jitter` is true. `retry_on` and
    `dont_retry_on` choose the errors that retry, by class (or class name, for
    errors reported from workers that do not share this code).
    """

    max_retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: bool = True
    retry_on: tuple[type[BaseException] | str, ...] = field(default=(Exception,))
    dont_retry_on: tuple[type[BaseException] | str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise ValueError(f"RetryPolicy values must not be negative: {self!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        cap = min(self.backoff_max, self.backoff * 2 ** max(retry - 1, 0))
        return random.uniform(0, cap) if self.jitter else cap

    def retries(self, error_types: Iterable[str]) -> bool:
        """Whether an error whose class and bases are named `error_types` retries."""
        names = set(error_types)
        if "PermanentFailure" in names:
            return False

        def hit(kinds: tuple[type[BaseException] | str, ...]) -> bool:
            return any((k if isinstance(k, str) else k.__name__) in names for k in kinds)

        return hit(self.retry_on) and not hit(self.dont_retry_on)


def error_types(exc: BaseException) -> list[str]:
    """The names of an exception's class and its bases (what `RetryPolicy.retries` reads)."""
    return [cls.__name__ for cls in type(exc).__mro__ if cls not in (object, BaseException)]
