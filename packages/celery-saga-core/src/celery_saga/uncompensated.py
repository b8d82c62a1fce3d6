"""Warn, once, about a saga step that nothing would undo.

A step given neither a compensation nor ``no_compensation=True`` (and none from
``@saga_step``) is silently skipped when the saga compensates or is reverted. That is
right for a step with nothing to undo and a bug otherwise, so the definition says
which: the first time a saga is defined with such a step, an
`UncompensatedStepWarning` names the saga and the step and says how to settle it.
Child saga steps (compensated as a whole) never warn.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from types import FrameType

from celery_saga.errors import UncompensatedStepWarning
from celery_saga.plan import Step
from celery_saga.tasks import task_name

_INSIDE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_warned: set[tuple[str, int, str]] = set()
_lock = threading.Lock()


def check(saga_name: str, index: int, step: Step) -> None:
    """Warn if step `index` of saga `saga_name` has no compensation and does not say why.

    Once per saga name, step index and task name in a process, however often the
    saga is defined or registered again (a test suite, a module imported twice).
    """
    if step.compensate is not None or step.no_compensation:
        return
    name = task_name(step.task)
    key = (saga_name, index, name)
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    what = f"external step {index} ({name!r})" if step.external else f"step {index} ({name})"
    warnings.warn(
        f"saga {saga_name!r}: {what} has no compensation, so nothing undoes it if the saga "
        "fails after it or is reverted. Give it one (compensate=..., a (task, compensate) "
        "pair in add_parallel, or @saga_step(compensate=...)), or pass no_compensation=True "
        "if it has nothing to undo. To silence this warning everywhere: "
        'warnings.filterwarnings("ignore", category=celery_saga.UncompensatedStepWarning).',
        UncompensatedStepWarning,
        stacklevel=_outside_stacklevel(),
    )


def _outside_stacklevel() -> int:
    """The `stacklevel` of the first frame outside celery_saga: the user's definition."""
    frame: FrameType | None = sys._getframe(2)  # the caller of `check`
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INSIDE):
        frame = frame.f_back
        level += 1
    return level
