"""``celery -A proj saga ...``: inspect and operate sagas from the command line.

A Celery CLI plugin (entry-point group ``celery.commands``). Exit codes a script
can rely on: 0 done, 1 refused (the saga is not in a state where that applies),
2 bad input (a malformed id or option), 3 not found, 4 some errors (a recovery pass
that could not move every execution on; each is reported), 5 unreadable (the stored
record cannot be read; the message says why and what to do). ``show --follow`` exits 0
when the saga COMPLETED, 1 when it ended another way, 130 on Ctrl-C.
"""

from __future__ import annotations

from celery_saga.cli import outside as _outside  # noqa: F401  (complete, fail, revert)
from celery_saga.cli import stats as _stats  # noqa: F401  (stats)
from celery_saga.cli import views as _views  # noqa: F401  (show, graph)
from celery_saga.cli.commands import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SOME_ERRORS,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    saga,
)

__all__ = [
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_SOME_ERRORS",
    "EXIT_UNREADABLE",
    "EXIT_USAGE",
    "saga",
]
