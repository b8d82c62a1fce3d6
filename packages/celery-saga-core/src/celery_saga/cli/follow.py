"""``celery saga show ID --follow``: watch an execution until it ends, a line per change.

The store is read every `interval` seconds; a stage's progress line ("stage 2/5: 3/3
done") is printed when it changes, the saga's status when it changes, and the
outcome at the end. Reading is all it does: stopping it (Ctrl-C) leaves the saga
running.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery_saga.models import (
    FINISHED_STEP_STATUSES,
    TERMINAL_STATUSES,
    SagaExecution,
    StepRecord,
    StepStatus,
)

#: The step statuses a progress line counts apart, in the order it names them.
_NAMED = (
    StepStatus.RUNNING,
    StepStatus.PENDING,
    StepStatus.FAILED,
    StepStatus.SKIPPED,
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATED,
    StepStatus.COMPENSATION_FAILED,
)


def _started(records: list[StepRecord]) -> bool:
    return any(r.attempt > 0 or r.status is not StepStatus.PENDING for r in records)


def progress(execution: SagaExecution) -> dict[int, str]:
    """A line per stage that has started: ``stage 2/5: 1/3 done (2 running)``.

    "done" counts steps whose forward part is over (succeeded, failed, skipped or
    compensated since); the parenthesis counts every status but success.
    """
    stages: dict[int, list[StepRecord]] = {}
    for record in execution.steps:
        stages.setdefault(record.stage, []).append(record)
    lines: dict[int, str] = {}
    for number, stage in enumerate(sorted(stages), start=1):
        records = stages[stage]
        if not _started(records):
            continue
        done = sum(r.status in FINISHED_STEP_STATUSES for r in records)
        counts = [(sum(r.status is s for r in records), s.value) for s in _NAMED]
        named = ", ".join(f"{count} {name}" for count, name in counts if count)
        line = f"stage {number}/{len(stages)}: {done}/{len(records)} done"
        lines[stage] = line + (f" ({named})" if named else "")
    return lines


def outcome(execution: SagaExecution) -> str:
    """The last line: the final status, how long it took, and the error if any."""
    took = ""
    if execution.finished_at is not None:
        took = f" in {max(0.0, execution.finished_at - execution.created_at):.3f}s"
    line = f"saga {execution.saga_id} {execution.status.value.upper()}{took}"
    return line + (f": {execution.error}" if execution.error else "")


def follow(
    read: Callable[[], SagaExecution | None],
    echo: Callable[[str], None],
    interval: float,
) -> SagaExecution | None:
    """Read with `read` every `interval` seconds, echo what changed, until it ends.

    Returns the finished execution, or None if it disappeared (deleted meanwhile).
    """
    shown: dict[int, str] = {}
    status = None
    while True:
        execution = read()
        if execution is None:
            return None
        if execution.status is not status:
            status = execution.status
            echo(f"saga {execution.saga_id} {execution.saga_name}: {status.value.upper()}")
        for stage, line in sorted(progress(execution).items()):
            if shown.get(stage) != line:
                shown[stage] = line
                echo(line)
        if execution.status in TERMINAL_STATUSES:
            echo(outcome(execution))
            return execution
        time.sleep(interval)
