"""Deleting finished executions: one by id, or every one finished before a cutoff.

An execution goes with its steps and counters, in one write transaction that locks
its row first (as every writer does). `purge_finished` works in batches of
`PURGE_BATCH` executions, one transaction each, so a large purge never holds many
locks at once. Unfinished executions are never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BindParameter, and_, bindparam, delete, or_, select

from celery_saga.models import TERMINAL_STATUSES, SagaStatus
from celery_saga_sql.schema import Tables
from celery_saga_sql.transactions import Runner, Tx

#: Executions deleted per transaction by `purge_finished`.
PURGE_BATCH = 500
_TERMINAL_VALUES = tuple(sorted(s.value for s in TERMINAL_STATUSES))


def _drop(tx: Tx, tables: Tables, saga_ids: Sequence[str]) -> None:
    """Delete executions with their steps and counters (rows already locked)."""
    ids: BindParameter[str] = bindparam("ids", expanding=True)
    for table in (tables.steps, tables.counters, tables.executions):
        tx.execute(delete(table).where(table.c.saga_id.in_(ids)), {"ids": saga_ids})


def delete_finished(run: Runner, tables: Tables, saga_id: str) -> bool:
    """Delete a finished execution; False if there is none. Refuses an unfinished one."""
    e = tables.executions

    def work(tx: Tx) -> bool:
        found = tx.execute(
            select(e.c.status).where(e.c.saga_id == saga_id).with_for_update()
        ).scalar()
        if found is None:
            return False
        if SagaStatus(found) not in TERMINAL_STATUSES:
            raise ValueError(
                f"saga {saga_id} is {found}: only finished executions "
                "can be deleted (cancel it first, or wait for it to finish)"
            )
        _drop(tx, tables, [saga_id])
        return True

    return run.write(work)


def purge_finished(run: Runner, tables: Tables, finished_before: float) -> int:
    """Delete the executions that finished before the cutoff (by ``updated_at`` when
    they have no ``finished_at``); return how many."""
    e = tables.executions
    cutoff = float(finished_before)
    batch_size = PURGE_BATCH
    doomed = (
        select(e.c.saga_id)
        .where(
            e.c.status.in_(_TERMINAL_VALUES),
            or_(
                e.c.finished_at < cutoff,
                and_(e.c.finished_at.is_(None), e.c.updated_at < cutoff),
            ),
        )
        .limit(batch_size)
        .with_for_update()
    )

    def batch(tx: Tx) -> int:
        ids: list[str] = [str(i) for i in tx.execute(doomed).scalars().all()]
        if ids:
            _drop(tx, tables, ids)
        return len(ids)

    total = 0
    while True:
        removed = run.write(batch)
        total += removed
        if removed < batch_size:
            return total
