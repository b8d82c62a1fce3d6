"""Leases and late successes in the Redis store, standalone and on the cluster.

The conformance suite checks the contract; these check what is particular to Redis:
the Lua lease conditions agree with `StepExpect.refusal` on every combination, the
new step fields come back exactly (Lua's cjson keeps 14 significant digits, so they
must never be re-encoded by it), a heartbeat is one exchange whatever the number of
leases and executions, and lease writes never touch an execution's expiry.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import pytest

from celery_saga.backends import Lease, StartNext, StepExpect
from celery_saga.models import SagaStatus, StepRecord, StepStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, step_scripts

#: Seconds since the epoch with 17 significant digits: cjson would round them.
EXACT = 1_717_171_717.1234567


def _running(store: RedisSagaBackend, **lease: Any) -> str:
    execution = make_execution()
    store.create(execution)
    changes = {"status": StepStatus.RUNNING, "attempt": 1, **lease}
    assert store.update_step(execution.saga_id, 0, changes).applied
    return execution.saga_id


def test_lease_conditions_agree_with_refusal_on_every_combination(
    store: RedisSagaBackend,
) -> None:
    sid = _running(store)
    t = EXACT
    held_by = [None, "host/1/a", "hôst/2/b"]
    until = [None, t - 1, t, t + 1e-6, t + 1]
    free_at = [None, t]
    holder = [None, "host/1/a", "other"]
    owners: list[tuple[str | None, ...] | None] = [
        None,
        (),
        ("host/1/a",),
        (None,),
        ("other", None),
        ("hôst/2/b", "host/1/a"),
    ]
    for owner, expires, free, hold, allowed in itertools.product(
        held_by, until, free_at, holder, owners
    ):
        store.update_step(sid, 0, {"lease_owner": owner, "lease_expires_at": expires})
        expect = StepExpect(lease_free_at=free, lease_holder=hold, lease_owners=allowed)
        refusal = expect.refusal(StepStatus.RUNNING, 1, 0, SagaStatus.RUNNING, owner, expires)
        write = store.update_step(sid, 0, {"retries": 1}, expect=expect)
        case = (owner, expires, expect)
        assert write.applied is (refusal is None), case
        assert (write.lease_owner, write.lease_expires_at) == (owner, expires), case


def test_new_step_fields_come_back_exactly(store: RedisSagaBackend) -> None:
    late = {"1": {"state": "recorded", "output": {"id": 2**62 + 1, "r": 0.1 + 0.2}}}
    execution = make_execution(stages=[0, 1, 1])
    execution.steps[0] = StepRecord(
        index=0,
        task_name="tasks.step0",
        stage=0,
        status=StepStatus.RUNNING,
        attempt=2,
        lease_owner="host/7/tâsk",
        lease_expires_at=EXACT + 30,
        sent_at=EXACT,
        sends=3,
        late=late,
    )
    store.create(execution)
    got = store.get(execution.saga_id)
    assert got is not None and got.to_dict()["steps"] == execution.to_dict()["steps"]

    sid = execution.saga_id
    write = store.update_step(
        sid, 0, {"lease_expires_at": EXACT + 60, "sent_at": EXACT + 1, "sends": 4}
    )
    assert write.applied and (write.lease_owner, write.lease_expires_at) == (
        "host/7/tâsk",
        EXACT + 60,
    )
    # A write that re-encodes the step's small fields leaves the raw ones alone.
    store.update_step(sid, 0, {"status": StepStatus.SUCCESS, "retries": 1}, count_in="stage:0")
    start = StartNext(
        check=(0,),
        start=(1, 2),
        changes={
            i: {"status": StepStatus.RUNNING, "attempt": 1, "sent_at": EXACT + i} for i in (1, 2)
        },
    )
    _, read = store.update_step_and_get(sid, 0, {}, count_in="stage:0", get_at=2, start_next=start)
    assert read is not None
    for record in (read, store.get(sid)):
        assert record is not None
        step = record.step(0)
        assert (step.lease_expires_at, step.sent_at, step.sends) == (EXACT + 60, EXACT + 1, 4)
        assert step.late == late
        assert [record.step(i).sent_at for i in (1, 2)] == [EXACT + 1, EXACT + 2]
        assert record.step(1).status is StepStatus.RUNNING

    moved = store.record_late(
        sid, 0, 1, {"state": "compensating", "at": EXACT}, expect_state="recorded"
    )
    assert moved.applied and moved.status is StepStatus.SUCCESS
    assert moved.lease_expires_at == EXACT + 60
    store.update_step(sid, 0, {"lease_owner": None, "lease_expires_at": None})
    got = store.get(sid)
    assert got is not None
    step = got.step(0)
    assert step.late == {"1": {**late["1"], "state": "compensating", "at": EXACT}}
    assert (step.lease_owner, step.lease_expires_at) == (None, None)
    # The whole `late` field can be written too, and still merged into afterwards.
    store.update_step(sid, 1, {"late": {"4": {"state": "recorded", "n": 2**60}}})
    assert store.record_late(sid, 1, 4, {"state": "compensated"}, expect_state="recorded").applied
    got = store.get(sid)
    assert got is not None and got.step(1).late == {"4": {"state": "compensated", "n": 2**60}}


def test_renew_leases_is_one_exchange_for_executions_on_every_node(
    store: RedisSagaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = time.time()
    sids = [_running(store) for _ in range(24)]
    if store.cluster:
        nodes = {store.client.get_node_from_key(store.keys.execution(s)).name for s in sids}
        assert len(nodes) == 3  # (2/3)**24 per node: practically never fewer
    leases = [Lease(sid, 0, "me", 1) for sid in sids]
    leases += [Lease(sids[0], 1, "me", 1), Lease(str(uuid.uuid4()), 0, "me", 1)]
    store.stats.reset()
    lost = store.renew_leases(leases, t + 60)
    assert lost == leases[-2:]
    assert store.stats.round_trips == 1
    for sid in sids:
        got = store.get(sid)
        assert got is not None
        assert (got.step(0).lease_owner, got.step(0).lease_expires_at) == ("me", t + 60)

    # Later heartbeats go by SHA; a node that lost the script gets it by body, at the
    # cost of one more exchange (here: every node, a script none of them has seen).
    unseen = store.client.register_script(step_scripts.RENEW + f"-- {uuid.uuid4()}\n")
    monkeypatch.setattr(store._steps, "_renew", unseen)
    store.stats.reset()
    assert store.renew_leases(leases[:-2], t + 90) == []
    assert store.stats.round_trips == (2 if store.cluster else 1)
    store.stats.reset()
    assert store.renew_leases(leases[:-2], t + 120) == []
    assert store.stats.round_trips == 1
    got = store.get(sids[-1])
    assert got is not None and got.step(0).lease_expires_at == t + 120


def test_standalone_heartbeat_is_one_script_call(
    redis_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisSagaBackend.from_url(redis_store_url)
    try:
        sids = [_running(store) for _ in range(10)]
        calls: list[int] = []
        real = store.client.evalsha

        def evalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            calls.append(numkeys)
            return real(sha, numkeys, *keys_and_args)

        monkeypatch.setattr(store.client, "evalsha", evalsha)
        leases = [Lease(sid, 0, "me", 1) for sid in sids] + [Lease(sids[3], 0, "you", 1)]
        assert store.renew_leases(leases, time.time() + 60) == [leases[-1]]
        assert calls == [10]
    finally:
        store.close()


def test_lease_and_late_writes_never_touch_the_expiry(store_url: str) -> None:
    store = RedisSagaBackend.from_url(f"{store_url}&ttl=300")
    try:
        t = time.time()
        sid = _running(store, lease_owner="me", lease_expires_at=t + 5)
        key = store.keys.execution(sid)
        assert store.renew_leases([Lease(sid, 0, "me", 1)], t + 60) == []
        assert store.record_late(sid, 0, 1, {"state": "recorded"}).applied
        assert store.take_over(sid, 0, {"attempt": 2}, attempt=1, now=t + 61).applied
        assert store.client.ttl(key) == -1  # unfinished: never an expiry

        assert store.update_saga(sid, {"status": SagaStatus.FAILED, "finished_at": time.time()})
        assert 0 < store.client.ttl(key) <= 300
        assert store.renew_leases([Lease(sid, 0, "me", 2)], t + 90) == []
        assert store.record_late(sid, 0, 2, {"state": "recorded"}).applied
        assert 0 < store.client.ttl(key) <= 300  # still armed: HSET keeps it

        # An execution that is gone (expired, purged) is not brought back as a husk.
        store.client.delete(key)
        assert store.renew_leases([Lease(sid, 0, "me", 2)], t + 120) != []
        with pytest.raises(KeyError):
            store.record_late(sid, 0, 3, {"state": "recorded"})
        with pytest.raises(KeyError):
            store.take_over(sid, 0, {"attempt": 3}, attempt=2, now=t + 200)
        assert not store.client.exists(key)
        with pytest.raises(KeyError):
            store.record_late(_running(store), 9, 1, {"state": "recorded"})  # no such step
    finally:
        store.close()
