"""Retention of finished executions in the Redis store: the `ttl` option and its default.

A finished execution expires `ttl` seconds after it finished (7 days unless told
otherwise; 0 or ``none`` keeps it for ever); so do its idempotency key and the index of
its children. Nothing an unfinished execution needs ever expires: an execution taken
back to an active status loses the expiry, and gets it again when it finishes. Expired
executions leave the listings that meet them and the indexes `purge` sweeps.
"""

from __future__ import annotations

import time

import pytest
from celery import Celery
from support import wait_until

from celery_saga.backends import Lease
from celery_saga.config import backend_for
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, scores
from celery_saga_redis.backend import DEFAULT_TTL

WEEK = 7 * 24 * 3600


def ttls(store: RedisSagaBackend, saga_id: str, key: str) -> tuple[int, int, int]:
    """TTL of the execution, its idempotency key and its children index (-2: none)."""
    client = store.client
    return (
        client.ttl(store.keys.execution(saga_id)),
        client.ttl(store.keys.idempotency(key)),
        client.ttl(store.keys.index_parent(saga_id)),
    )


def test_the_default_is_seven_days_and_zero_or_none_keep_for_ever(redis_store_url: str) -> None:
    assert DEFAULT_TTL == WEEK
    made = [
        RedisSagaBackend.from_url(redis_store_url),
        RedisSagaBackend.from_url(f"{redis_store_url}&ttl=0"),
        RedisSagaBackend.from_url(f"{redis_store_url}&ttl=none"),
        RedisSagaBackend.from_url(f"{redis_store_url}&ttl=3600"),
        RedisSagaBackend.from_url(redis_store_url, ttl=0),
        RedisSagaBackend.from_url(f"{redis_store_url}&ttl=60", ttl=0),  # the URL's wins
    ]
    try:
        assert [s.ttl for s in made] == [WEEK, 0, 0, 3600, 0, 60]
    finally:
        for store in made:
            store.close()
    with pytest.raises(ValueError, match="ttl"):
        RedisSagaBackend.from_url(f"{redis_store_url}&ttl=soon")

    # The Celery setting that gives a store built from a URL its options.
    app = Celery("retention", set_as_current=False)
    app.conf.saga_backend = redis_store_url
    app.conf.saga_backend_options = {"ttl": "none"}
    configured = backend_for(app)
    assert isinstance(configured, RedisSagaBackend) and configured.ttl == 0


def test_a_finish_arms_the_expiry_and_a_way_back_takes_it_away(store: RedisSagaBackend) -> None:
    parent = make_execution(idempotency_key="order-7")
    sid = parent.saga_id
    store.create(parent)
    store.create(make_execution(parent_id=sid, parent_step=0))
    never = (-1, -1, -1)
    assert ttls(store, sid, "order-7") == never
    assert store.update_step(sid, 0, {"status": StepStatus.RUNNING}, count_in="stage:0").applied
    assert store.renew_leases([Lease(sid, 0, "me", 0)], time.time() + 60) == []
    assert ttls(store, sid, "order-7") == never
    assert store.client.ttl(store.keys.counters(sid)) == -1

    assert store.update_saga(sid, {"status": SagaStatus.FAILED, "finished_at": time.time()})
    assert all(WEEK - 60 < t <= WEEK for t in ttls(store, sid, "order-7"))
    assert not store.client.exists(store.keys.counters(sid))
    # An operator's retry: unfinished again, nothing of it expires.
    assert store.update_saga(
        sid, {"status": SagaStatus.COMPENSATING}, expect_status={SagaStatus.FAILED}
    )
    assert ttls(store, sid, "order-7") == never
    assert store.update_saga(sid, {"status": SagaStatus.COMPLETED})
    assert all(WEEK - 60 < t <= WEEK for t in ttls(store, sid, "order-7"))
    # A revert, then REVERTED.
    assert store.update_saga(
        sid, {"status": SagaStatus.COMPENSATING}, expect_status={SagaStatus.COMPLETED}
    )
    assert ttls(store, sid, "order-7") == never
    assert store.update_saga(sid, {"status": SagaStatus.REVERTED})
    assert all(WEEK - 60 < t <= WEEK for t in ttls(store, sid, "order-7"))


@pytest.mark.parametrize(
    ("child", "counted", "earlier_version", "flag"),
    [
        (False, False, False, "0"),  # the common saga: nothing beside its hash
        (True, False, False, "1"),
        (False, True, False, "1"),
        (True, True, False, "1"),
        (True, False, True, None),  # no flag: the finish looks for the keys
        (False, False, True, None),
        (False, True, True, "1"),  # counted by this version: flagged
    ],
)
def test_the_extras_flag_says_which_keys_a_finish_tidies(
    store: RedisSagaBackend, child: bool, counted: bool, earlier_version: bool, flag: str | None
) -> None:
    """A new execution says it has no counters or children index until one appears; its
    finish tidies them (deletes the counters, arms the index's expiry) exactly when they
    exist, and so does the finish of an execution an earlier version wrote (no flag)."""
    parent = make_execution(idempotency_key=f"extras-{child}-{counted}-{earlier_version}")
    sid = parent.saga_id
    store.create(parent)
    hash_key = store.keys.execution(sid)
    assert store.client.hget(hash_key, "x") == "0"
    if earlier_version:
        store.client.hdel(hash_key, "x")
    if child:
        store.create(make_execution(parent_id=sid, parent_step=0))
    if counted:
        write = store.update_step(sid, 0, {"status": StepStatus.RUNNING}, count_in="stage:0")
        assert write.applied and write.count == 1
    if not store.cluster:  # a cluster's client tidies the children index itself
        assert store.client.hget(hash_key, "x") == flag
    assert store.client.exists(store.keys.counters(sid)) == counted

    assert store.update_saga(sid, {"status": SagaStatus.COMPLETED, "finished_at": time.time()})
    assert not store.client.exists(store.keys.counters(sid))
    children = store.client.ttl(store.keys.index_parent(sid))
    assert (WEEK - 60 < children <= WEEK) if child else children == -2
    assert WEEK - 60 < store.client.ttl(hash_key) <= WEEK


def test_with_no_retention_nothing_expires(store_url: str) -> None:
    store = RedisSagaBackend.from_url(f"{store_url}&ttl=0")
    try:
        execution = make_execution(idempotency_key="kept")
        store.create(execution)
        assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPENSATED})
        assert ttls(store, execution.saga_id, "kept")[:2] == (-1, -1)
    finally:
        store.close()


def test_a_count_after_the_finish_goes_with_the_execution(store: RedisSagaBackend) -> None:
    """A late forward outcome counted after the finish: its counter expires with it."""
    execution = make_execution()
    sid = execution.saga_id
    store.create(execution)
    assert store.update_saga(sid, {"status": SagaStatus.CANCELLED})
    write = store.update_step(sid, 1, {"status": StepStatus.SKIPPED}, count_in="stage:1")
    assert write.applied and write.count == 1
    assert 0 < store.client.ttl(store.keys.counters(sid)) <= WEEK
    assert store.delete(sid)
    assert not store.client.exists(store.keys.counters(sid))


def test_expired_executions_leave_every_index(store_url: str) -> None:
    """Listings remove what they meet; purge sweeps the rest, whoever listed what."""
    store = RedisSagaBackend.from_url(f"{store_url}&ttl=1")
    keep = RedisSagaBackend.from_url(store_url)  # same prefix, no expiry of its own
    try:
        gone = [make_execution(name="short", created_at=time.time() - 10) for _ in range(3)]
        stays = make_execution(name="short", created_at=time.time() - 10)
        running = make_execution(name="short", created_at=time.time() - 10)
        for execution in (*gone, stays, running):
            store.create(execution)
        for execution in gone:
            assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})
        assert keep.update_saga(stays.saga_id, {"status": SagaStatus.COMPLETED})

        def expired() -> bool:
            return not any(store.client.exists(store.keys.execution(e.saga_id)) for e in gone)

        wait_until(expired, 30, "the finished executions to expire")
        ids = {e.saga_id for e in gone}
        # The indexes of every execution and of every name of the layout before this
        # one, as a worker of an earlier version still writes them: purge sweeps them.
        legacy = [store.keys.index_all(), store.keys.index_name("short")]
        for index in legacy:
            store.client.zadd(index, {e.saga_id: scores.score(e.created_at) for e in gone})
        indexes = [*legacy, *store.keys.indexes_for("short", "completed")]
        for index in indexes:  # still there: nothing has looked yet
            assert ids <= set(store.client.zrange(index, 0, -1))
        # One listing removes what it met, from the index it read only.
        assert {s.saga_id for s in store.list(status=SagaStatus.COMPLETED).items} == {stays.saga_id}
        assert not ids & set(store.client.zrange(store.keys.index_status("completed"), 0, -1))
        assert ids <= set(
            store.client.zrange(store.keys.index_name_status("short", "completed"), 0, -1)
        )
        # Purge sweeps the others; it deletes what finished before its cutoff, nothing else.
        assert store.purge(time.time() - 3600) == 0
        for index in indexes:
            assert not ids & set(store.client.zrange(index, 0, -1))
        assert {s.saga_id for s in store.list(name="short").items} == {
            stays.saga_id,
            running.saga_id,
        }
    finally:
        store.close()
        keep.close()
