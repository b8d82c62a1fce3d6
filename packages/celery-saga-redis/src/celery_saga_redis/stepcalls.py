"""The step scripts' calls: their ARGV, built from a step write's arguments, and their
replies as the `StepWrite` of the store contract.

UPDATE_STEP and FINISH_STEP (step_scripts.py) take the write's conditions, counter and next
stage first (`step_args`), then one block per step written (`step_changes`, the layout's
`StepChanges`); their reply begins with the step's stored state (`step_write`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import redis

from celery_saga.backends.base import StartNext, StepExpect, StepWrite, plain_value
from celery_saga.models import SagaStatus, StepStatus, now
from celery_saga_redis import layout
from celery_saga_redis.keys import Keys

_dumps = layout.dumps


def statuses(values: Collection[Any] | None) -> str:
    return "" if values is None else " ".join(sorted(plain_value(v) for v in values))


def saga_pairs(changes: Mapping[str, Any]) -> list[Any]:
    """UPDATE_SAGA's trailing ARGV: each field of the saga's changes and its JSON text."""
    pairs: list[Any] = []
    for name, value in changes.items():
        pairs += [name, _dumps(value)]
    return pairs


def saga_update_lead(
    keys: Keys, ttl: int, saga_id: str, allowed: Collection[Any] | None
) -> list[Any]:
    """UPDATE_SAGA's first ARGV: now, the allowed statuses, the TTL, the done channel."""
    return [_dumps(now()), statuses(allowed), ttl, keys.done_channel(saga_id)]


def optional(value: int | None) -> str:
    return "" if value is None else str(int(value))


def lease_conditions(expect: StepExpect) -> str:
    """ARGV of the lease conditions for UPDATE_STEP ('' when there are none)."""
    if expect.lease_free_at is None and expect.lease_owners is None:
        return ""
    owners = None if expect.lease_owners is None else list(expect.lease_owners)
    return _dumps([expect.lease_free_at, expect.lease_holder, owners])


def loads(raw: str | None) -> Any:
    return None if raw is None else json.loads(raw)


def step_write(
    reply: list[Any],
    changes: Mapping[str, Any] | None = None,
    count: Any = None,
    started: Any = None,
) -> StepWrite:
    """The StepWrite of a step script's reply (its first seven values: the stored state).

    An applied write reports the state after it: `changes` over what was stored.
    """
    applied, status, attempt, comp_attempt, saga_status, owner, expires = reply[:7]
    state: dict[str, Any] = {
        "status": status,
        "attempt": int(attempt),
        "comp_attempt": int(comp_attempt),
        "lease_owner": loads(owner),
        "lease_expires_at": loads(expires),
    }
    if applied and changes:
        state.update((k, plain_value(changes[k])) for k in state.keys() & changes.keys())
    return StepWrite(
        applied=bool(applied),
        status=StepStatus(state["status"]),
        attempt=int(state["attempt"]),
        saga_status=SagaStatus(saga_status),
        count=int(count) if count is not None else None,
        comp_attempt=int(state["comp_attempt"]),
        started=tuple(int(i) for i in started or ()),
        lease_owner=state["lease_owner"],
        lease_expires_at=state["lease_expires_at"],
    )


def raise_if_missing(exc: redis.ResponseError, saga_id: str, index: int) -> None:
    """A step script's NOSAGA/NOSTEP error as the KeyError of the contract."""
    if "NOSAGA" in str(exc) or "NOSTEP" in str(exc):
        raise KeyError(f"no step {index} in saga {saga_id}") from None


#: The position in UPDATE_STEP's ARGV of how many trailing values end the saga.
FINISH_SLOT = 13


def step_args(
    index: int,
    e: StepExpect,
    count_in: str | None,
    get_at: int | None,
    read: bool,
    start_next: StartNext | None,
) -> list[Any]:
    """UPDATE_STEP's ARGV up to the step's write (see step_scripts.py), ending the saga in none."""
    args: list[Any] = [
        index,
        _dumps(now()),
        statuses(e.status),
        optional(e.attempt),
        optional(e.attempt_at_most),
        statuses(e.saga_status),
        optional(e.comp_attempt),
        optional(e.comp_attempt_at_most),
        count_in or "",
        "" if get_at is None else f"{'' if read else '!'}{int(get_at)}",
    ]
    if start_next is None:
        args += ["", ""]
    else:
        args += [" ".join(map(str, start_next.check)), " ".join(map(str, start_next.start))]
    args += [lease_conditions(e), 0]
    return args


def step_changes(args: list[Any], saga_id: str, index: int, changes: Mapping[str, Any]) -> int:
    """Append one step's write to UPDATE_STEP's ARGV (see layout.StepChanges); its size."""
    block = layout.StepChanges(saga_id, index, changes).args()
    args += block
    return sum(len(str(part)) for part in block)
