"""Lease renewal in SQL: one ``UPDATE`` of the steps table joined to the leases.

Each dialect hands the leases over in its own way (arrays on PostgreSQL, a ``VALUES``
list on SQLite, a derived table on MySQL/MariaDB, see `celery_saga_sql.dialects`);
what they share is here: the step state each lease needs (`Lease.expect`), the
renewing statement, and telling from the renewed rows which leases are still held.
Only step rows are written and locked: a heartbeat is not a change of the saga.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Table, or_, update

from celery_saga.backends.base import Lease
from celery_saga.models import StepStatus

#: A lease as the renewing statement sees it (see `target`), and the step column each
#: of these is compared with.
FIELDS = ("saga_id", "idx", "owner", "status", "attempt", "comp_attempt")
COMPARED_WITH = ("saga_id", "idx", "lease_owner", "status", "attempt", "comp_attempt")
_RUNNING = StepStatus.RUNNING.value
_COMPENSATING = StepStatus.COMPENSATING.value


def target(lease: Lease) -> tuple[str, int, str, str, int | None, int | None]:
    """`Lease.expect` as values of `FIELDS`: the step state the lease needs."""
    if lease.compensation:
        return (lease.saga_id, lease.index, lease.owner, _COMPENSATING, None, lease.attempt)
    return (lease.saga_id, lease.index, lease.owner, _RUNNING, lease.attempt, None)


def order(lease: Lease) -> tuple[str, int, str, int, bool]:
    """Sort key of leases: every renewal locks step rows in this one order."""
    return (lease.saga_id, lease.index, lease.owner, lease.attempt, lease.compensation)


def renewed_columns(steps: Table) -> list[Any]:
    """What `renewed` reads of a renewed step."""
    c = steps.c
    return [c.saga_id, c.idx, c.lease_owner, c.status, c.attempt, c.comp_attempt]


def renew_from(steps: Table, v: Any, expires: Any) -> Any:
    """The renewing ``UPDATE``, joined to `v` (one row per lease: `FIELDS`)."""
    s = steps
    return (
        update(s)
        .where(
            s.c.saga_id == v.c.saga_id,
            s.c.idx == v.c.idx,
            s.c.status == v.c.status,
            # One of the two is NULL in `v`: a forward lease names the attempt, a
            # compensation's lease the compensation attempt.
            or_(s.c.attempt == v.c.attempt, s.c.comp_attempt == v.c.comp_attempt),
            or_(s.c.lease_owner == v.c.owner, s.c.lease_owner.is_(None)),
        )
        .values({s.c.lease_owner: v.c.owner, s.c.lease_expires_at: expires})
    )


def renewed(leases: Sequence[Lease], rows: Sequence[Row[Any]]) -> set[Lease]:
    """The leases that `rows` (steps as renewed: key, owner, status, attempts) show held."""
    found = {(row.saga_id, int(row.idx)): row for row in rows}
    kept: set[Lease] = set()
    for lease in leases:
        row = found.get((lease.saga_id, lease.index))
        if row is None or row.lease_owner != lease.owner:
            continue
        if lease.compensation:
            held = row.status == _COMPENSATING and int(row.comp_attempt) == lease.attempt
        else:
            held = row.status == _RUNNING and int(row.attempt) == lease.attempt
        if held:
            kept.add(lease)
    return kept
