"""Where the kinds of step that no task message carries out plug into the driver.

Child sagas (`children`) and external steps (`external`) register here how their
steps begin and are undone, and who hears that an execution ended or was
cancelled; the driver calls them without importing those modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery_saga.runtime.log import log

if TYPE_CHECKING:
    from celery_saga.models import SagaExecution, SagaStatus, StepRecord
    from celery_saga.runtime.binding import Runtime

#: Begins attempt `attempt` of step `index` with its input: (rt, execution, index, attempt, input).
Starter = Callable[["Runtime", "SagaExecution", int, int, dict[str, Any]], None]
#: Undoes a step that no compensation message undoes: (rt, execution, record).
Undoer = Callable[["Runtime", "SagaExecution", "StepRecord"], None]
#: Hears that an execution ended: (rt, execution, status, output).
Ended = Callable[["Runtime", "SagaExecution", "SagaStatus", Any], None]
#: Hears that an execution was cancelled (or passed its deadline): (rt, saga id, reason).
Cancelled = Callable[["Runtime", str, "str | None"], None]
_starters: dict[str, Starter] = {}
_undoers: dict[str, Undoer] = {}
_ended: list[Ended] = []
_cancelled: list[Cancelled] = []


def on_start(kind: str, starter: Starter) -> None:
    """Register how steps of `kind` (a `StepKind` value other than "task") begin."""
    _starters[kind] = starter


def on_undo(kind: str, undoer: Undoer) -> None:
    """Register how steps of `kind` are compensated, instead of a compensation message."""
    _undoers[kind] = undoer


def on_end(hook: Ended) -> None:
    """Register a hook called once when an execution completes or ends compensated."""
    if hook not in _ended:
        _ended.append(hook)


def on_cancel(hook: Cancelled) -> None:
    """Register a hook called when an execution is cancelled or past its deadline."""
    if hook not in _cancelled:
        _cancelled.append(hook)


def start(
    kind: str,
    rt: Runtime,
    execution: SagaExecution,
    index: int,
    attempt: int,
    input: dict[str, Any],
) -> None:
    """Begin a step of `kind` through its registered starter."""
    _starters[kind](rt, execution, index, attempt, input)


def undoer(kind: str) -> Undoer | None:
    """How steps of `kind` are undone, if not by a compensation message."""
    return _undoers.get(kind)


def ended(rt: Runtime, execution: SagaExecution, status: SagaStatus, output: Any) -> None:
    """Tell the hooks; one that fails is logged (recovery of a parent catches up)."""
    for hook in _ended:
        try:
            hook(rt, execution, status, output)
        except Exception as exc:
            log(logging.ERROR, execution.saga_id, None, "after saga %s: %r", status.value, exc)


def cancelled(rt: Runtime, saga_id: str, reason: str | None) -> None:
    """Tell the hooks that `saga_id` was cancelled (its running children stop too)."""
    for hook in _cancelled:
        hook(rt, saga_id, reason)
