"""Executions and steps as plain JSON-able dicts: one shape for every reader.

`SagaResult.steps`, ``celery saga show --json`` and the web view all show a step
through `step_view`, so a key means the same thing everywhere. Timestamps are
epoch seconds by default (what `SagaResult.steps` always gave) or, with
``iso=True``, ISO 8601 strings in UTC ("2026-12-02T14:03:01.123456Z").
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from celery_saga.models import SagaExecution, StepRecord


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with microseconds and a ``Z`` (None stays None)."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _when(ts: float | None, as_iso: bool) -> Any:
    return iso(ts) if as_iso else ts


def history_view(record: StepRecord, *, iso: bool = False) -> list[dict[str, Any]] | None:
    """The step's earlier attempts (oldest first), timestamps converted like the rest."""
    history = record.history
    if history is None:
        return None
    entries = []
    for entry in history:
        item = dict(entry)
        for key in ("started_at", "finished_at"):
            if isinstance(item.get(key), int | float):
                item[key] = _when(float(item[key]), iso)
        entries.append(item)
    return entries


def step_view(record: StepRecord, *, iso: bool = False) -> dict[str, Any]:
    """One step as a dict: the keys of `SagaResult.steps`, compensation, workers, history."""
    return {
        "step_index": record.index,
        "task_name": record.task_name,
        "status": record.status.value,
        "error": record.error,
        "output": record.output,
        "attempt": record.attempt,
        "retries": record.retries,
        "task_id": record.task_id,
        "started_at": _when(record.started_at, iso),
        "finished_at": _when(record.finished_at, iso),
        "compensation_task_name": record.compensation_task_name,
        "compensation_error": record.comp_error,
        "stage": record.stage,
        "kind": record.kind,
        "child_id": record.child_id,
        "worker": record.worker,
        "compensation_data": record.compensation_data,
        "compensation_attempt": record.comp_attempt,
        "compensation_started_at": _when(record.comp_started_at, iso),
        "compensation_finished_at": _when(record.comp_finished_at, iso),
        "compensation_worker": record.comp_worker,
        "history": history_view(record, iso=iso),
    }


def execution_view(execution: SagaExecution, *, iso: bool = True) -> dict[str, Any]:
    """The whole execution: its stored header fields, then `step_view` of each step.

    Every header field whose name ends in ``_at`` is a timestamp and is converted.
    """
    data = execution.header_dict()
    for key, value in data.items():
        if key.endswith("_at") and isinstance(value, int | float):
            data[key] = _when(float(value), iso)
    data["steps"] = [step_view(s, iso=iso) for s in execution.steps]
    return data
