"""The history of a step's attempts: an entry for each attempt that is over.

An attempt stops being the step's current one when its retry policy sends a new one,
when recovery takes it over, or when a failed compensation is tried again; the write
that moves the step on also appends the old attempt here (`StepRecord.history`).
The common path (one attempt that succeeds) writes no history. The list keeps the
last `HISTORY_LIMIT` entries, so a step that flaps cannot grow its record forever.
"""

from __future__ import annotations

from typing import Any

from celery_saga.models import StepRecord, StepStatus, now

#: Entries kept per step (the oldest are dropped first).
HISTORY_LIMIT = 50


def entry(
    part: str,
    attempt: int,
    outcome: str,
    *,
    started_at: float | None,
    worker: str | None,
    error: str | None,
    finished_at: float | None = None,
) -> dict[str, Any]:
    """One entry of `StepRecord.history` (the shape `celery_saga.models` documents)."""
    return {
        "part": part,
        "attempt": attempt,
        "started_at": started_at,
        "finished_at": now() if finished_at is None else finished_at,
        "worker": worker,
        "outcome": outcome,
        "error": error,
    }


def appended(record: StepRecord, new: dict[str, Any]) -> list[dict[str, Any]]:
    """`record`'s history with `new` at the end, cut to the last `HISTORY_LIMIT` entries."""
    return [*(record.history or []), new][-HISTORY_LIMIT:]


def forward_over(
    record: StepRecord,
    outcome: str,
    error: str | None,
    *,
    attempt: int | None = None,
    started_at: float | None = None,
    worker: str | None = None,
) -> list[dict[str, Any]]:
    """The history once the current forward attempt of `record` is over.

    `attempt`, `started_at` and `worker` default to what the record holds.
    """
    return appended(
        record,
        entry(
            "forward",
            record.attempt if attempt is None else attempt,
            outcome,
            started_at=record.started_at if started_at is None else started_at,
            worker=record.worker if worker is None else worker,
            error=error,
        ),
    )


def compensation_over(
    record: StepRecord,
    outcome: str,
    error: str | None,
    *,
    attempt: int | None = None,
    worker: str | None = None,
    finished_at: float | None = None,
) -> list[dict[str, Any]]:
    """The history once the current compensation attempt of `record` is over."""
    return appended(
        record,
        entry(
            "compensation",
            record.comp_attempt if attempt is None else attempt,
            outcome,
            started_at=record.comp_started_at,
            worker=record.comp_worker if worker is None else worker,
            error=error,
            finished_at=finished_at,
        ),
    )


def taken_over(record: StepRecord, *, compensation: bool = False) -> list[dict[str, Any]]:
    """The history once recovery takes over the current attempt of `record` (or of its
    compensation): its lease expired, or it was sent and never started."""
    if record.lease_owner is not None:
        why = f"taken over by recovery: the lease of {record.lease_owner} expired"
    else:
        why = "taken over by recovery: no worker started it in time"
    if compensation:  # a compensation attempt that started holds (or held) a lease
        ran = record.lease_owner is not None
        part, attempt, started_at = "compensation", record.comp_attempt, record.comp_started_at
        worker = record.comp_worker
    else:
        ran = record.status is not StepStatus.PENDING
        # Attempt 0: the first send was lost before anything recorded it.
        part, attempt, started_at = "forward", max(record.attempt, 1), record.started_at
        worker = record.worker
    return appended(
        record,
        entry(
            part,
            attempt,
            "taken_over",
            started_at=started_at if ran else None,
            worker=worker,
            error=why,
        ),
    )
