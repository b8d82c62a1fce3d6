"""The listing query of the SQL store: newest first, filtered, resumed by a keyset cursor.

Every filter is an equality the executions table has an index for, followed by
``(created_at, saga_id)``: status, saga name, or parent execution (schema version
4), so the database reads a page from the index, never the whole table. The cursor
is the (created_at, saga_id) of the last row returned; the next page starts
strictly after it, so rows never repeat or go missing while others are written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, Table, and_, or_, select

from celery_saga.models import SagaStatus

#: The executions columns a listing row carries (`SagaSummary`'s fields).
SUMMARY_COLUMNS = (
    "saga_id",
    "saga_name",
    "status",
    "created_at",
    "updated_at",
    "finished_at",
    "idempotency_key",
    "error",
    "parent_id",
)


def listing_query(
    executions: Table,
    *,
    status: SagaStatus | None,
    name: str | None,
    parent_id: str | None,
    created_before: float | None,
    created_after: float | None,
    after: tuple[float, str] | None,
    limit: int,
) -> Select[Any]:
    """One page plus one row (to tell whether a next page exists), newest first."""
    e = executions.c
    stmt = select(*(e[column] for column in SUMMARY_COLUMNS))
    if status is not None:
        stmt = stmt.where(e.status == status.value)
    if name is not None:
        stmt = stmt.where(e.saga_name == name)
    if parent_id is not None:
        stmt = stmt.where(e.parent_id == parent_id)
    if created_before is not None:
        stmt = stmt.where(e.created_at < float(created_before))
    if created_after is not None:
        stmt = stmt.where(e.created_at > float(created_after))
    if after is not None:
        at, last_id = after
        stmt = stmt.where(or_(e.created_at < at, and_(e.created_at == at, e.saga_id < last_id)))
    return stmt.order_by(e.created_at.desc(), e.saga_id.desc()).limit(limit + 1)
