"""Saga composition in the Redis store, standalone and on the cluster.

The conformance suite checks the contract (parent links, kinds, child ids, REVERTED,
listing by parent); these check what is particular to Redis: the children index is a
sorted set per parent that leaves with its executions, an execution without the new
fields is stored without them, records written by celery-saga 0.3 (record schema 1, in
the hash layout of that release) read back with defaults, and REVERTED executions expire.
"""

from __future__ import annotations

import json
import time

from redis_support import previous_layout

from celery_saga.models import SagaStatus, StepKind, StepStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, scores


def test_children_index_is_a_sorted_set_per_parent_that_leaves_with_them(
    store: RedisSagaBackend,
) -> None:
    parent = make_execution()
    store.create(parent)
    children = [
        make_execution(parent_id=parent.saga_id, parent_step=i, created_at=1_700_000_000.5 + i)
        for i in range(3)
    ]
    for child in children:
        store.create(child)
    index = store.keys.index_parent(parent.saga_id)
    assert store.client.zrange(index, 0, -1, withscores=True) == [
        (c.saga_id, scores.score(c.created_at)) for c in children
    ]
    assert not store.client.exists(store.keys.index_parent(children[0].saga_id))
    for child in children[:2]:
        store.update_saga(child.saga_id, {"status": SagaStatus.FAILED, "finished_at": 1.0})
    assert store.delete(children[0].saga_id)
    assert store.client.zscore(index, children[0].saga_id) is None
    assert store.purge(time.time()) == 1
    assert store.client.zrange(index, 0, -1) == [children[2].saga_id]
    store.update_saga(children[2].saga_id, {"status": SagaStatus.REVERTED, "finished_at": 1.0})
    assert store.purge(time.time()) == 1
    assert not store.client.exists(index)  # an empty sorted set is no key at all
    assert store.list(parent_id=parent.saga_id).items == []


def test_executions_without_the_new_fields_are_stored_without_them(
    store: RedisSagaBackend,
) -> None:
    plain = make_execution()
    store.create(plain)
    raw = store.client.hgetall(store.keys.execution(plain.saga_id))
    assert set(json.loads(raw["h"])) == {"saga_name", "definition_hash", "schema"}
    assert "h:revert_reason" not in raw
    assert all("k" not in json.loads(raw[f"s:{i}"]) for i in range(3))

    child = make_execution(parent_id=plain.saga_id, parent_step=2)
    child.steps[0].kind = StepKind.EXTERNAL.value
    store.create(child)
    raw = store.client.hgetall(store.keys.execution(child.saga_id))
    head = json.loads(raw["h"])
    assert (head["parent_id"], head["parent_step"]) == (plain.saga_id, 2)
    assert json.loads(raw["s:0"])["k"] == "external"
    # A step write rewrites the step's head and appends to its object: the kind stays.
    store.update_step(child.saga_id, 0, {"status": StepStatus.RUNNING}, count_in="stage:0")
    got = store.get(child.saga_id)
    assert got is not None and got.step(0).kind == "external"
    summary = store.list(parent_id=plain.saga_id).items
    assert [(s.saga_id, s.parent_id) for s in summary] == [(child.saga_id, plain.saga_id)]


def test_a_record_written_by_0_3_reads_with_defaults_and_takes_the_new_fields(
    store: RedisSagaBackend,
) -> None:
    """Record schema 1, in the hash layout of that release: no parent link, no revert
    reason, steps without kind or child id, each step one object with long names."""
    old = make_execution()
    fields = previous_layout(old)
    head = json.loads(fields["h"])
    fields["h"] = json.dumps({**head, "schema": 1})
    for i in range(3):
        step = json.loads(fields[f"s:{i}"])
        step.pop("kind", None)
        step.pop("child_id", None)
        fields[f"s:{i}"] = json.dumps(step)
    key = store.keys.execution(old.saga_id)
    store.client.hset(key, mapping=fields)
    got = store.get(old.saga_id)
    assert got is not None
    assert (got.schema, got.parent_id, got.parent_step, got.revert_reason) == (1, None, None, None)
    assert [(s.kind, s.child_id) for s in got.steps] == [("task", None)] * 3
    assert got.to_dict() | {"updated_at": 0, "schema": 2} == old.to_dict() | {"updated_at": 0}

    child = make_execution(parent_id=old.saga_id, parent_step=1)
    store.create(child)
    assert store.update_step(old.saga_id, 1, {"child_id": child.saga_id}).applied
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATING):
        assert store.update_saga(old.saga_id, {"status": status, "revert_reason": "back"})
    got = store.get(old.saga_id)
    assert got is not None
    assert (got.status, got.revert_reason, got.step(1).child_id) == (
        SagaStatus.COMPENSATING,
        "back",
        child.saga_id,
    )


def test_a_reverted_child_expires_and_leaves_its_parents_listing(store_url: str) -> None:
    store = RedisSagaBackend.from_url(f"{store_url}&ttl=1")
    try:
        parent = make_execution()
        store.create(parent)
        child = make_execution(parent_id=parent.saga_id, parent_step=0)
        store.create(child)
        key = store.keys.execution(child.saga_id)
        assert store.update_saga(child.saga_id, {"status": SagaStatus.COMPLETED})
        assert 0 < store.client.ttl(key) <= 1
        assert store.update_saga(
            child.saga_id, {"status": SagaStatus.COMPENSATING}, expect_status={SagaStatus.COMPLETED}
        )
        assert store.client.ttl(key) == -1  # reverting: never an expiry while unfinished
        assert store.update_saga(child.saga_id, {"status": SagaStatus.REVERTED})
        assert 0 < store.client.ttl(key) <= 1
        deadline = time.monotonic() + 10
        while store.client.exists(key):
            assert time.monotonic() < deadline, "the reverted execution did not expire"
            time.sleep(0.05)
        assert store.list(parent_id=parent.saga_id).items == []
        assert store.client.zscore(store.keys.index_parent(parent.saga_id), child.saga_id) is None
    finally:
        store.close()
