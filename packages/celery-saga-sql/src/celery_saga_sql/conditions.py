"""`StepExpect` as SQL conditions on bound parameters, for statements built once.

A statement that checks the expectations server side is built once per *shape* of
`StepExpect` (which conditions it has, how many statuses or owners each names:
`shape`), with the values as bound parameters (`params`), so a step write reuses a
statement instead of building one. `clauses` agrees with `StepExpect.refusal`; the
conformance suite and the store tests check that.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, false, or_

from celery_saga.backends.base import StepExpect

#: Which conditions an expectation has; None when there is none (see `shape`).
Shape = tuple[Any, ...] | None


def _owner_names(expect: StepExpect) -> list[str]:
    assert expect.lease_owners is not None
    return sorted({owner for owner in expect.lease_owners if owner is not None})


def shape(expect: StepExpect | None) -> Shape:
    """What the statement checking `expect` looks like, without the values."""
    if expect is None:
        return None
    owners = None
    if expect.lease_owners is not None:
        owners = (len(_owner_names(expect)), None in expect.lease_owners)
    return (
        None if expect.status is None else len(expect.status),
        expect.attempt is not None,
        expect.attempt_at_most is not None,
        expect.comp_attempt is not None,
        expect.comp_attempt_at_most is not None,
        None if expect.saga_status is None else len(expect.saga_status),
        expect.lease_free_at is not None,
        expect.lease_free_at is not None and expect.lease_holder is not None,
        owners,
    )


def params(expect: StepExpect | None) -> dict[str, Any]:
    """The bound values of `expect` for a statement built by `clauses`."""
    if expect is None:
        return {}
    found: dict[str, Any] = {}
    if expect.status is not None:
        for i, value in enumerate(sorted(s.value for s in expect.status)):
            found[f"x_status_{i}"] = value
    if expect.saga_status is not None:
        for i, value in enumerate(sorted(s.value for s in expect.saga_status)):
            found[f"x_saga_status_{i}"] = value
    for name in ("attempt", "attempt_at_most", "comp_attempt", "comp_attempt_at_most"):
        value = getattr(expect, name)
        if value is not None:
            found[f"x_{name}"] = int(value)
    if expect.lease_free_at is not None:
        found["x_free_at"] = float(expect.lease_free_at)
        if expect.lease_holder is not None:
            found["x_holder"] = expect.lease_holder
    if expect.lease_owners is not None:
        for i, name in enumerate(_owner_names(expect)):
            found[f"x_owner_{i}"] = name
    return found


def _one_of(column: Any, name: str, count: int) -> ColumnElement[bool]:
    if count == 0:
        return false()
    found: ColumnElement[bool] = column.in_([bindparam(f"{name}_{i}") for i in range(count)])
    return found


def clauses(cur: Any, expected: Shape) -> list[ColumnElement[bool]]:
    """The conditions of an expectation of shape `expected` on the locked state `cur`."""
    if expected is None:
        return []
    statuses, attempt, at_most, comp, comp_at_most, saga, free_at, holder, owners = expected
    c = cur.c
    found: list[ColumnElement[bool]] = []
    if statuses is not None:
        found.append(_one_of(c.status, "x_status", statuses))
    if attempt:
        found.append(c.attempt == bindparam("x_attempt"))
    if at_most:
        found.append(c.attempt <= bindparam("x_attempt_at_most"))
    if comp:
        found.append(c.comp_attempt == bindparam("x_comp_attempt"))
    if comp_at_most:
        found.append(c.comp_attempt <= bindparam("x_comp_attempt_at_most"))
    if saga is not None:
        found.append(_one_of(c.saga_status, "x_saga_status", saga))
    if free_at:
        # Free at that time: no owner, or expired by then, or held by `lease_holder`.
        free: list[ColumnElement[bool]] = [
            c.lease_owner.is_(None),
            and_(
                c.lease_expires_at.is_not(None),
                c.lease_expires_at <= bindparam("x_free_at"),
            ),
        ]
        if holder:
            free.append(c.lease_owner == bindparam("x_holder"))
        found.append(or_(*free))
    if owners is not None:
        names, none = owners
        allowed: list[ColumnElement[bool]] = []
        if names:
            allowed.append(c.lease_owner.in_([bindparam(f"x_owner_{i}") for i in range(names)]))
        if none:
            allowed.append(c.lease_owner.is_(None))
        found.append(or_(*allowed) if allowed else false())
    return found
