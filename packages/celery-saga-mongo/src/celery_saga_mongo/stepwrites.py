"""A step write as MongoDB documents: the filter that encodes its `StepExpect`
(`step_query`), its update (`step_update`), the projection that reads back what it
decides on (`step_projection`), and the `StepWrite` it reports (`step_write`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_saga.backends.base import Lease, StepExpect, StepWrite
from celery_saga.models import SagaStatus, StepStatus
from celery_saga_mongo.documents import check_number

#: Field of a step write's reply that carries the whole document (see `step_projection`).
WHOLE = "execution"


def step_query(saga_id: str, index: int, expect: StepExpect | None) -> dict[str, Any]:
    """The filter of a step write: the step exists, and every expectation holds.

    Statuses and attempts are matched on ``steps.<i>.<field>``. The lease conditions
    are matched inside ``$elemMatch`` on the element whose ``index`` is `index`: they
    test for null, and a null test on ``steps.<i>.lease_owner`` would also match when
    any other step lacks a field named ``<i>`` (a numeric path component is both an
    array position and a field name), which every step does. They say exactly what
    `StepExpect.refusal` says: with `lease_free_at`, no owner (null or absent), the
    owner `lease_holder`, or an expiry at or before `lease_free_at` (a null expiry
    never is); with `lease_owners`, the owner is one of them (None: null or absent).
    """
    prefix = f"steps.{index}"
    query: dict[str, Any] = {"_id": saga_id, f"{prefix}.index": index}
    if expect is None:
        return query
    if expect.status is not None:
        query[f"{prefix}.status"] = {"$in": sorted(s.value for s in expect.status)}
    for field, equal, at_most in (
        ("attempt", expect.attempt, expect.attempt_at_most),
        ("comp_attempt", expect.comp_attempt, expect.comp_attempt_at_most),
    ):
        condition: dict[str, int] = {}
        if equal is not None:
            condition["$eq"] = int(equal)
        if at_most is not None:
            condition["$lte"] = int(at_most)
        if condition:
            query[f"{prefix}.{field}"] = condition
    if expect.saga_status is not None:
        query["status"] = {"$in": sorted(s.value for s in expect.saga_status)}
    lease: list[dict[str, Any]] = []
    if expect.lease_free_at is not None:
        free: list[dict[str, Any]] = [
            {"lease_owner": None},
            {"lease_expires_at": {"$lte": check_number(expect.lease_free_at, "lease_free_at")}},
        ]
        if expect.lease_holder is not None:
            free.append({"lease_owner": {"$eq": check_owner(expect.lease_holder, "lease_holder")}})
        lease.append({"$or": free})
    if expect.lease_owners is not None:
        owners = [
            None if owner is None else check_owner(owner, "lease owner")
            for owner in expect.lease_owners
        ]
        lease.append({"lease_owner": {"$in": owners}})
    if lease:
        query["steps"] = {"$elemMatch": {"index": index, "$and": lease}}
    return query


def check_owner(value: object, what: str) -> str:
    """A lease owner is compared as a value, so it must be a plain string."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string (host/pid/task-id), got {value!r}")
    return value


def holds(lease: Lease, document: Mapping[str, Any] | None) -> bool:
    """Whether `lease`'s owner holds it in `document` (read by `_lost_leases`)."""
    if document is None:
        return False  # the execution no longer exists
    step = document.get(f"s{lease.index}")
    if not step or step.get("index") != lease.index or step.get("status") is None:
        return False
    return (
        step.get("lease_owner") == lease.owner
        and lease.expect().refusal(
            StepStatus(step["status"]),
            int(step.get("attempt") or 0),
            int(step.get("comp_attempt") or 0),
            SagaStatus(document["status"]),
            step.get("lease_owner"),
            step.get("lease_expires_at"),
        )
        is None
    )


def step_update(
    index: int, values: Mapping[str, Any], counter: str | None, stamp: float
) -> dict[str, Any] | list[dict[str, Any]]:
    """The update of a step write.

    Without a counter: ``$set`` of ``steps.<i>.<field>`` and ``updated_at`` only.
    With one: a two-stage update pipeline. Stage one adds 1 to the counter; stage
    two merges the changes and the counter's new value (``seq``) into step `index`
    and leaves every other element as it is. Values are wrapped in ``$literal`` so
    a string such as ``"$status"`` is stored, never evaluated.
    """
    if counter is None:
        fields = {f"steps.{index}.{name}": value for name, value in values.items()}
        return {"$set": {**fields, "updated_at": stamp}}
    merged: dict[str, Any] = {name: {"$literal": value} for name, value in values.items()}
    merged["seq"] = f"${counter}"
    return [
        {
            "$set": {
                counter: {"$add": [{"$ifNull": [f"${counter}", 0]}, 1]},
                "updated_at": {"$literal": stamp},
            }
        },
        {
            "$set": {
                "steps": {
                    "$map": {
                        "input": "$steps",
                        "as": "step",
                        "in": {
                            "$cond": [
                                {"$eq": ["$$step.index", index]},
                                {"$mergeObjects": ["$$step", merged]},
                                "$$step",
                            ]
                        },
                    }
                }
            }
        },
    ]


def step_projection(
    index: int, counter: str | None = None, get_at: int | None = None
) -> dict[str, Any]:
    """Only what a `StepWrite` reports: the saga status and a few fields of step `index`.

    With `counter` and `get_at`, also the whole document (as ``WHOLE``) when the
    counter's value is `get_at`, and nothing more otherwise.
    """
    projection: dict[str, Any] = {"_id": 0, "status": 1, "step": step_fields(index)}
    if counter is not None and get_at is not None:
        projection[WHOLE] = {
            "$cond": [{"$eq": [f"${counter}", {"$literal": int(get_at)}]}, "$$ROOT", "$$REMOVE"]
        }
    return projection


def step_fields(index: int) -> dict[str, Any]:
    """A projection expression: the fields of step `index` a `StepWrite` reports."""
    return {
        "$let": {
            "vars": {"s": {"$arrayElemAt": ["$steps", index]}},
            "in": {
                "index": "$$s.index",
                "status": "$$s.status",
                "attempt": "$$s.attempt",
                "comp_attempt": "$$s.comp_attempt",
                "seq": "$$s.seq",
                "lease_owner": "$$s.lease_owner",
                "lease_expires_at": "$$s.lease_expires_at",
            },
        }
    }


def read_state(document: Mapping[str, Any], index: int, saga_id: str) -> dict[str, Any]:
    step = document.get("step") or {}
    if step.get("index") != index or step.get("status") is None:
        raise KeyError(f"no step {index} in saga {saga_id}")
    return {
        "status": step["status"],
        "attempt": step.get("attempt") or 0,
        "comp_attempt": step.get("comp_attempt") or 0,
        "seq": step.get("seq"),
        "lease_owner": step.get("lease_owner"),
        "lease_expires_at": step.get("lease_expires_at"),
        "saga_status": document["status"],
    }


def step_write(applied: bool, state: Mapping[str, Any], count: Any) -> StepWrite:
    return StepWrite(
        applied=applied,
        status=StepStatus(state["status"]),
        attempt=int(state["attempt"]),
        saga_status=SagaStatus(state["saga_status"]),
        count=None if count is None else int(count),
        comp_attempt=int(state["comp_attempt"]),
        lease_owner=state["lease_owner"],
        lease_expires_at=state["lease_expires_at"],
    )
