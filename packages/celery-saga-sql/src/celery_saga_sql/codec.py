"""Records as rows and back: JSON text columns, step changes, and the `StepWrite` reports.

User payloads are JSON text written with `json.dumps` (ASCII-only) and read with
`json.loads`, so values come back exact whatever the database or its character set.
Nothing read back is executed or unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Row

from celery_saga.backends.base import StepWrite, plain_value
from celery_saga.backends.helpers import compact_json
from celery_saga.errors import CorruptRecordError
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, StepStatus
from celery_saga_sql.schema import EXECUTION_JSON, STEP_JSON, Tables

#: The step columns a compare-and-set checks and a `StepWrite` reports.
STEP_STATE = ("status", "attempt", "comp_attempt", "lease_owner", "lease_expires_at")


def dumps(value: Any) -> str:
    """JSON text as stored: compact and ASCII-only.

    Escaping non-ASCII characters keeps the text byte-exact whatever the
    character set of the database or connection, and stores strings that are
    valid JSON but not valid UTF-8 (lone surrogates) as well.
    """
    return compact_json(value)


def step_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """A step's changes as column values: statuses as their values, JSON fields as text."""
    values: dict[str, Any] = {}
    for name, value in changes.items():
        plain = plain_value(value)
        if name == "status":
            plain = StepStatus(plain).value
        values[name] = dumps(plain) if name in STEP_JSON else plain
    return values


def saga_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """An execution's changes as column values (`update_saga`)."""
    values: dict[str, Any] = {}
    for name, value in changes.items():
        plain = plain_value(value)
        if name == "status":
            plain = SagaStatus(plain).value
        values[name] = dumps(plain) if name in EXECUTION_JSON else plain
    return values


class RowCodec:
    """Encodes executions and steps as rows of one store's tables, and decodes them."""

    def __init__(self, tables: Tables) -> None:
        self.exec_cols = [c.name for c in tables.executions.columns]
        self.step_cols = [c.name for c in tables.steps.columns if c.name != "saga_id"]

    def execution_row(self, execution: SagaExecution) -> dict[str, Any]:
        """The executions row of `execution` (without its steps)."""
        header = execution.header_dict()
        row = {name: header.get(name) for name in self.exec_cols}
        for name in EXECUTION_JSON:
            row[name] = dumps(header.get(name))
        row["status"] = SagaStatus(header["status"]).value
        return row

    def step_row(self, saga_id: str, step: StepRecord) -> dict[str, Any]:
        """The steps row of `step` in execution `saga_id`."""
        data = step.to_dict()
        data["idx"] = data.pop("index")
        row = {name: data.get(name) for name in self.step_cols}
        for name in STEP_JSON:
            row[name] = dumps(data.get(name))
        row["saga_id"] = saga_id
        return row

    def decode(self, rows: Sequence[Row[Any]]) -> SagaExecution | None:
        """The execution in `rows` (the execution joined to its steps), or None if empty."""
        if not rows:
            return None
        first = rows[0]._mapping
        header: dict[str, Any] = {name: first[f"e_{name}"] for name in self.exec_cols}
        for name in EXECUTION_JSON:
            raw = header[name]
            header[name] = None if raw is None else json.loads(raw)  # NULL: before version 5
        steps: list[dict[str, Any]] = []
        for row in rows:
            mapping = row._mapping
            if mapping["s_idx"] is None:
                continue
            step = {name: mapping[f"s_{name}"] for name in self.step_cols}
            step["index"] = step.pop("idx")
            step["no_compensation"] = bool(step["no_compensation"])
            for name in STEP_JSON:
                raw = step[name]
                step[name] = None if raw is None else json.loads(raw)  # NULL: older rows
            steps.append(step)
        header["steps"] = steps
        return SagaExecution.from_dict(header)


def report(
    found: Row[Any] | Any,
    values: Mapping[str, Any] | None = None,
    count: int | None = None,
    started: tuple[int, ...] = (),
) -> StepWrite:
    """The `StepWrite` of a step whose locked state was `found` (`STEP_STATE` and
    ``saga_status``): refused if `values` is None, else applied with `values` written."""
    if values is None:
        return StepWrite(
            False,
            StepStatus(found.status),
            int(found.attempt),
            SagaStatus(found.saga_status),
            None,
            int(found.comp_attempt),
            lease_owner=found.lease_owner,
            lease_expires_at=found.lease_expires_at,
        )
    get = values.get
    return StepWrite(
        True,
        StepStatus(get("status", found.status)),
        int(get("attempt", found.attempt)),
        SagaStatus(found.saga_status),
        count,
        int(get("comp_attempt", found.comp_attempt)),
        started,
        lease_owner=get("lease_owner", found.lease_owner),
        lease_expires_at=get("lease_expires_at", found.lease_expires_at),
    )


def late_entries(raw: str | None, saga_id: str, index: int) -> dict[str, Any]:
    """A step's stored ``late`` JSON as a dict of entries (NULL or ``null``: none)."""
    late = None if raw is None else json.loads(raw)
    if late is None:
        return {}
    if not isinstance(late, dict) or not all(isinstance(e, dict) for e in late.values()):
        raise CorruptRecordError(f"step {index}: late is {late!r}, not entries by attempt", saga_id)
    return late
