"""Saga composition in the MongoDB store, beyond the shared contract, on a real server.

The children of an execution are listed from an index of their own, which a store of
this version adds to a collection made by an older one on first use; documents
written before composition (record schema 1) read back with defaults and take the
new fields; a parent id is bound as a value, never as an operator.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from celery_saga.errors import InvalidSagaId
from celery_saga.models import SagaStatus, StepKind
from celery_saga.testing import make_execution
from celery_saga_mongo import MongoSagaBackend


def test_an_older_collection_gets_the_children_index_on_first_use(
    mongo_store: MongoSagaBackend, make_store: Callable[..., MongoSagaBackend]
) -> None:
    mongo_store.create(make_execution())
    info = mongo_store.executions.index_information()
    assert info["parent_created"]["key"] == [("parent_id", 1), ("created_at", 1), ("_id", 1)]
    mongo_store.executions.drop_index("parent_created")  # as a 0.3 store left it
    assert "parent_created" not in mongo_store.executions.index_information()
    newer = make_store()
    assert newer.list(parent_id=str(uuid.uuid4())).items == []
    assert "parent_created" in mongo_store.executions.index_information()
    without = make_store(create_indexes=False)
    without.executions.drop_index("parent_created")
    without.list(limit=1)
    assert "parent_created" not in without.executions.index_information()


def test_documents_from_before_composition_read_defaults_and_take_the_new_fields(
    mongo_store: MongoSagaBackend,
) -> None:
    old = make_execution()
    mongo_store.create(old)
    sid = old.saga_id
    mongo_store.executions.update_one(
        {"_id": sid},
        {
            "$unset": {
                "parent_id": "",
                "parent_step": "",
                "revert_reason": "",
                "steps.$[].kind": "",
                "steps.$[].child_id": "",
            },
            "$set": {"schema": 1},
        },
    )
    raw = mongo_store.executions.find_one({"_id": sid})
    assert raw is not None and "parent_id" not in raw and "kind" not in raw["steps"][0]
    got = mongo_store.get(sid)
    assert got is not None
    assert (got.schema, got.parent_id, got.parent_step, got.revert_reason) == (1, None, None, None)
    assert [(s.kind, s.child_id) for s in got.steps] == [("task", None)] * 3
    assert got.to_dict() | {"updated_at": 0, "schema": 2} == old.to_dict() | {"updated_at": 0}

    child = make_execution(parent_id=sid, parent_step=2)
    child.steps[0].kind = StepKind.EXTERNAL.value
    mongo_store.create(child)
    assert mongo_store.update_step(sid, 2, {"child_id": child.saga_id}).applied
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATING):
        assert mongo_store.update_saga(sid, {"status": status, "revert_reason": "back"})
    got = mongo_store.get(sid)
    assert got is not None
    assert (got.status, got.revert_reason, got.step(2).child_id, got.step(2).kind) == (
        SagaStatus.COMPENSATING,
        "back",
        child.saga_id,
        "task",
    )
    assert [s.saga_id for s in mongo_store.list(parent_id=sid).items] == [child.saga_id]
    # Top-level executions, old or new, are found by neither a parent nor a null one.
    assert mongo_store.list(parent_id=child.saga_id).items == []


def test_children_are_stored_natively_and_listed_from_their_index(
    mongo_store: MongoSagaBackend,
) -> None:
    parent = make_execution()
    mongo_store.create(parent)
    base = time.time() - 100
    children = [
        make_execution(created_at=base + i, parent_id=parent.saga_id, parent_step=i)
        for i in range(5)
    ]
    for child in children:
        mongo_store.create(child)
    raw = mongo_store.executions.find_one({"_id": children[0].saga_id})
    assert raw is not None
    assert (raw["parent_id"], raw["parent_step"], raw["steps"][0]["kind"]) == (
        parent.saga_id,
        0,
        "task",
    )
    query = {"parent_id": parent.saga_id, "created_at": {"$lt": base + 3}}
    newest_first = [("created_at", -1), ("_id", -1)]
    plan: dict[str, Any] = mongo_store.executions.find(query).sort(newest_first).explain()
    assert "parent_created" in str(plan["queryPlanner"]["winningPlan"]), plan
    page = mongo_store.list(parent_id=parent.saga_id, created_before=base + 3, limit=2)
    assert [s.saga_id for s in page.items] == [children[2].saga_id, children[1].saga_id]
    assert page.cursor is not None
    rest = mongo_store.list(parent_id=parent.saga_id, created_before=base + 3, cursor=page.cursor)
    assert [s.saga_id for s in rest.items] == [children[0].saga_id]


@pytest.mark.parametrize("bad", [{"$ne": None}, ["x"], 7, "", "$where", "a\x00b"])
def test_operator_shaped_parent_ids_are_refused(mongo_store: MongoSagaBackend, bad: Any) -> None:
    with pytest.raises(InvalidSagaId):
        mongo_store.list(parent_id=bad)
    with pytest.raises(InvalidSagaId):
        mongo_store.create(make_execution(parent_id=bad, parent_step=0))
