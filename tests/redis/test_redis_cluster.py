"""The Redis store on a real 3-master Redis Cluster (started by tests/redis/conftest.py)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from celery_saga.backends import SagaBackend, StepExpect
from celery_saga.models import SagaStatus, SagaSummary, StepStatus, now
from celery_saga.testing import BackendConformance, Requirements
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, cluster, scores


class Notifies(Requirements):
    @property
    def notifies_completion(self) -> bool:
        return True

    @property
    def notifies_completion_async(self) -> bool:
        return True

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        return True

    @property
    def expires_finished(self) -> bool:
        return True


class TestRedisClusterConformance(BackendConformance):
    requirements = Notifies()

    @pytest.fixture
    def backend(self, redis_cluster_store_url: str) -> Iterator[SagaBackend]:
        store = RedisSagaBackend.from_url(redis_cluster_store_url)
        assert store.cluster
        yield store
        store.close()

    @pytest.fixture
    def store_with_retention(
        self, redis_cluster_store_url: str
    ) -> Iterator[Callable[[int], SagaBackend]]:
        """Cluster stores with ``&ttl=<seconds>`` under this test's key prefix."""
        made: list[RedisSagaBackend] = []

        def make(seconds: int) -> SagaBackend:
            store = RedisSagaBackend.from_url(f"{redis_cluster_store_url}&ttl={seconds}")
            assert store.cluster
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()


@pytest.fixture
def store(redis_cluster_store_url: str) -> Iterator[RedisSagaBackend]:
    backend = RedisSagaBackend.from_url(redis_cluster_store_url)
    assert backend.cluster and isinstance(backend.client, RedisCluster)
    yield backend
    backend.close()


def listed(store: RedisSagaBackend, **filters: Any) -> list[SagaSummary]:
    """Every item of a listing, two per page (so cursors are exercised too)."""
    items: list[SagaSummary] = []
    cursor = None
    while True:
        page = store.list(limit=2, cursor=cursor, **filters)
        items += page.items
        cursor = page.cursor
        if cursor is None:
            return items


def ids(items: list[SagaSummary]) -> set[str]:
    return {item.saga_id for item in items}


def check_listing(store: RedisSagaBackend, name: str, truth: dict[str, SagaStatus]) -> None:
    """Every listing agrees with the executions' actual statuses: no stray, none missing."""
    for status in SagaStatus:
        expected = {sid for sid, s in truth.items() if s is status}
        for filters in ({"status": status}, {"status": status, "name": name}):
            items = listed(store, **filters)
            assert all(item.status is status for item in items), filters
            assert ids(items) & set(truth) == expected, filters
    assert ids(listed(store, name=name)) == set(truth)


def spy_scripts(store: RedisSagaBackend, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the KEYS of every script the store runs (the calls still reach the server)."""
    calls: list[list[str]] = []
    real: Callable[..., Any] = store.client.evalsha

    def evalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        calls.append([str(k) for k in keys_and_args[:numkeys]])
        return real(sha, numkeys, *keys_and_args)

    monkeypatch.setattr(store.client, "evalsha", evalsha)
    return calls


# -- (a) one slot per execution, executions on every node ---------------------------------


def test_every_key_of_an_execution_shares_one_slot_and_executions_use_every_master(
    store: RedisSagaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = store.client
    calls = spy_scripts(store, monkeypatch)
    executions = [make_execution(idempotency_key=f"slot-{i}") for i in range(60)]
    for i, execution in enumerate(executions):
        store.create(execution)
        sid = execution.saga_id
        store.update_step(sid, 0, {"status": StepStatus.RUNNING, "attempt": 1})
        store.update_step_and_get(
            sid,
            0,
            {"status": StepStatus.SUCCESS, "output": {"i": i}},
            expect=StepExpect(status=frozenset({StepStatus.RUNNING})),
            count_in="stage:0",
            get_at=1,
        )
        store.update_saga(sid, {"status": SagaStatus.COMPENSATING})
        store.update_saga(sid, {"status": SagaStatus.FAILED, "finished_at": now()})
    waited = store.wait(executions[0].saga_id, timeout=10)
    assert waited is not None and waited.status is SagaStatus.FAILED
    store.delete(executions[1].saga_id)
    assert store.purge(time.time() + 60) == len(executions) - 1

    # Every script ran on the keys of one slot (a real cluster refuses anything else).
    assert calls
    for keys in calls:
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys

    # Every key of one execution carries its hash tag, so they share its slot,
    # and Redis agrees with redis-py on that slot.
    node = client.get_primaries()[0]
    for execution in executions[:10]:
        sid = execution.saga_id
        names = [
            store.keys.execution(sid),
            store.keys.creating(sid),
            store.keys.done_channel(sid),
        ]
        assert all(f"{{{sid}}}" in name for name in names)
        slots = {key_slot(name.encode()) for name in names}
        assert slots == {key_slot(sid.encode())}
        assert client.execute_command("CLUSTER KEYSLOT", names[0], target_nodes=node) == (
            slots.pop()
        )

    # Executions are spread over all three masters: each hash lives on the node that
    # serves its slot (60 random ids miss a given node with probability (2/3)**60).
    masters = {n.name for n in client.get_primaries()}
    assert len(masters) == 3
    spread: dict[str, int] = {}
    fresh = [make_execution() for _ in range(60)]
    for execution in fresh:
        store.create(execution)
    for execution in fresh:
        key = store.keys.execution(execution.saga_id)
        owner = client.get_node_from_key(key)
        assert owner.redis_connection.exists(key) == 1
        spread[owner.name] = spread.get(owner.name, 0) + 1
    assert set(spread) == masters, spread


# -- (b) listing while status changes are interrupted ---------------------------------


def test_listing_is_right_while_a_status_change_is_interrupted(store: RedisSagaBackend) -> None:
    name = "interrupted"
    made = [make_execution(name=name, created_at=time.time() - 100 + i) for i in range(6)]
    for execution in made:
        store.create(execution)
    truth = {e.saga_id: SagaStatus.RUNNING for e in made}
    a, b = made[1], made[4]

    # 1. The new-status entries are written, the compare-and-set has not happened yet.
    for index in store.keys.indexes_for(name, SagaStatus.FAILED.value):
        store.client.zadd(index, {a.saga_id: a.created_at})
    check_listing(store, name, truth)
    # Readers leave the entry alone: the change may still complete.
    assert store.client.zscore(store.keys.index_status("failed"), a.saga_id) is not None
    assert store.update_saga(a.saga_id, {"status": SagaStatus.FAILED})
    truth[a.saga_id] = SagaStatus.FAILED
    check_listing(store, name, truth)

    # 2. The compare-and-set happened, the old entries were never removed.
    for index in store.keys.indexes_for(name, SagaStatus.COMPENSATING.value):
        store.client.zadd(index, {b.saga_id: scores.score(b.created_at)})
    applied, old, new = store._update_saga(
        keys=[store.keys.execution(b.saga_id)],
        args=[
            json.dumps(now()),
            "running",
            0,
            store.keys.done_channel(b.saga_id),
            "",
            "",
            "status",
            '"compensating"',
        ],
    )
    assert (applied, old, new) == (1, "running", "compensating")
    truth[b.saga_id] = SagaStatus.COMPENSATING
    check_listing(store, name, truth)
    assert store.client.zscore(store.keys.index_status("running"), b.saga_id) is not None

    # 3. A refused compare-and-set leaves its early entry behind: still never shown.
    assert not store.update_saga(
        b.saga_id, {"status": SagaStatus.COMPLETED}, expect_status={SagaStatus.RUNNING}
    )
    check_listing(store, name, truth)
    assert store.update_saga(b.saga_id, {"status": SagaStatus.COMPENSATED})
    truth[b.saga_id] = SagaStatus.COMPENSATED
    check_listing(store, name, truth)


def test_listing_is_right_while_a_create_is_interrupted(store: RedisSagaBackend) -> None:
    name = "half-created"
    done = make_execution(name=name)
    store.create(done)
    pending = make_execution(name=name, parent_id=done.saga_id, parent_step=0)
    sid = pending.saga_id
    # The create has marked the execution and indexed it, but not written it yet.
    assert store._cluster._begin_create(
        keys=[store.keys.execution(sid), store.keys.creating(sid)], args=["creator", 60]
    )
    store._indexes.add(pending)
    truth = {done.saga_id: SagaStatus.RUNNING}
    check_listing(store, name, truth)
    assert store.get(sid) is None
    # Readers did not take the entries for those of a vanished execution.
    assert store.client.zscore(store.keys.index_status("running"), sid) is not None
    assert store.client.zscore(store.keys.index_name_status(name, "running"), sid) is not None
    assert listed(store, parent_id=done.saga_id) == []
    assert store.client.zscore(store.keys.index_parent(done.saga_id), sid) is not None
    assert store._cluster._write_created(pending, store._fields(pending), "creator") == 1
    truth[sid] = SagaStatus.RUNNING
    check_listing(store, name, truth)
    assert not store.client.exists(store.keys.creating(sid))
    assert ids(listed(store, parent_id=done.saga_id)) == {sid}

    # An entry whose execution is gone, with no create under way, is removed by readers.
    ghost = make_execution(name=name)
    store._indexes.add(ghost)
    check_listing(store, name, truth)
    for index in store.keys.indexes_for(name, "running"):
        assert store.client.zscore(index, ghost.saga_id) is None


def test_a_create_killed_between_its_mark_and_its_write_does_not_block_its_id(
    store: RedisSagaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery re-creates a child under its fixed id after the worker creating it was
    SIGKILLed: the dead create's mark expires and the id is taken over."""
    monkeypatch.setattr(cluster, "_CREATING_TTL", 1)
    name = "killed-create"
    child = make_execution(name=name, idempotency_key=f"parent-{os.urandom(3).hex()}/1")
    sid = child.saga_id
    keys = [store.keys.execution(sid), store.keys.creating(sid)]
    assert store._cluster._begin_create(keys=keys, args=["killed-worker", 1]) == 1
    store._indexes.add(child)  # the killed create got this far
    started = time.monotonic()
    stored, created = store.create(child)
    assert created and stored.saga_id == sid
    assert time.monotonic() - started < 4  # the mark's lifetime, not an hour
    assert store.get(sid) is not None
    assert not store.client.exists(store.keys.creating(sid))
    check_listing(store, name, {sid: SagaStatus.RUNNING})
    # A create of the id now finds the execution: the same create (its idempotency key
    # names it) gets it back, another is told the id is taken.
    again, created = store.create(child)
    assert not created and again.saga_id == sid
    stranger = make_execution(name=name)
    stranger.saga_id = sid
    with pytest.raises(ValueError, match="already exists"):
        store.create(stranger)


def test_a_create_that_outlived_its_mark_indexes_again_or_yields_to_the_one_that_won(
    store: RedisSagaBackend, redis_cluster_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create frozen past its mark's lifetime: a reader may have removed its index
    entries meanwhile (it starts again and indexes again), or another create of the
    same id took over and wrote it (it returns that one)."""
    name = "frozen-create"
    real_add = store._indexes.add
    frozen: list[str] = []
    other = RedisSagaBackend.from_url(redis_cluster_store_url)

    def add_then_freeze(execution: Any) -> None:
        real_add(execution)
        sid = execution.saga_id
        if sid not in frozen:  # the first time: the mark expires while the create sleeps
            frozen.append(sid)
            store.client.delete(store.keys.creating(sid))
            listed(store, name=name)  # a reader removes the entries of the missing one
            assert store.client.zscore(store.keys.index_name_status(name, "running"), sid) is None
            if execution.idempotency_key == "taken-over":
                assert other.create(execution)[1]

    monkeypatch.setattr(store._indexes, "add", add_then_freeze)
    try:
        lone = make_execution(name=name)
        assert store.create(lone) == (lone, True)
        assert frozen == [lone.saga_id]
        check_listing(store, name, {lone.saga_id: SagaStatus.RUNNING})

        raced = make_execution(name=name, idempotency_key="taken-over")
        stored, created = store.create(raced)
        assert not created and stored.saga_id == raced.saga_id
        truth = {lone.saga_id: SagaStatus.RUNNING, raced.saga_id: SagaStatus.RUNNING}
        check_listing(store, name, truth)
        assert not store.client.exists(store.keys.creating(raced.saga_id))
    finally:
        other.close()


def test_a_status_that_comes_back_while_a_change_tidies_up_stays_listed(
    store: RedisSagaBackend, redis_cluster_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A: RUNNING -> COMPENSATING; B, right after A's compare-and-set: back to RUNNING.

    A then removes its old (RUNNING) entries: without a second look the execution,
    RUNNING again, would be missing from the RUNNING listings for good.
    """
    name = "comes-back"
    execution = make_execution(name=name)
    store.create(execution)
    other = RedisSagaBackend.from_url(redis_cluster_store_url)
    real = store._cluster._update_saga
    interleaved: list[bool] = []

    def cas_then_other_writer(*args: Any, **kwargs: Any) -> Any:
        reply = real(*args, **kwargs)
        if not interleaved:
            interleaved.append(other.update_saga(execution.saga_id, {"status": SagaStatus.RUNNING}))
        return reply

    monkeypatch.setattr(store._cluster, "_update_saga", cas_then_other_writer)
    try:
        assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPENSATING})
    finally:
        other.close()
    assert interleaved == [True]
    got = store.get(execution.saga_id)
    assert got is not None and got.status is SagaStatus.RUNNING
    check_listing(store, name, {execution.saga_id: SagaStatus.RUNNING})


def test_status_flips_from_many_threads_leave_every_execution_listed_under_its_status(
    store: RedisSagaBackend,
) -> None:
    """Statuses changing back and forth (no expectations), with readers listing meanwhile."""
    name = "flips"
    made = [make_execution(name=name) for _ in range(6)]
    for execution in made:
        store.create(execution)
    statuses = [SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PENDING]
    stop = threading.Event()
    errors: list[BaseException] = []

    def flipper(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                execution = rng.choice(made)
                store.update_saga(execution.saga_id, {"status": rng.choice(statuses)})
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        # Never an execution under a status it does not have, whatever the timing.
        try:
            while not stop.is_set():
                for status in statuses:
                    items = store.list(status=status, name=name, limit=100).items
                    assert all(item.status is status for item in items)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    flippers = [threading.Thread(target=flipper, args=(i,)) for i in range(8)]
    for thread in flippers:
        thread.start()
    for thread in flippers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors, errors
    truth: dict[str, SagaStatus] = {}
    for execution in made:
        got = store.get(execution.saga_id)
        assert got is not None
        truth[execution.saga_id] = got.status
    check_listing(store, name, truth)


# -- (c) idempotent create racing on the cluster -----------------------------------------


def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_16_threads_racing_idempotent_creates_make_one_execution_per_key(
    store: RedisSagaBackend,
) -> None:
    every: set[str] = set()
    for key in (f"race-{i}" for i in range(5)):  # keys in different slots

        def create(i: int, key: str = key) -> tuple[Any, bool]:
            return store.create(make_execution(idempotency_key=key))

        results = _race(16, create)
        winners = {stored.saga_id for stored, created in results if created}
        assert len(winners) == 1
        assert {stored.saga_id for stored, _ in results} == winners
        found = store.find_by_idempotency_key(key)
        assert found is not None and found.saga_id in winners
        every.update(winners)
    # The losers left no executions, no index entries and no 'creating' markers.
    assert ids(listed(store)) == every
    assert store.client.zcard(store.keys.index_status("running")) == len(every)
    for node in store.client.get_primaries():
        leftover = list(
            store.client.scan_iter(match=f"{store.keys.prefix}creating:*", target_nodes=node)
        )
        assert not leftover


def test_idempotency_key_of_a_vanished_execution_is_taken_over_at_once(
    store: RedisSagaBackend,
) -> None:
    first, created = store.create(make_execution(idempotency_key="vanish"))
    assert created
    # The execution disappears (as when its TTL expires), its idempotency key stays.
    store.client.delete(store.keys.execution(first.saga_id))
    assert store.client.get(store.keys.idempotency("vanish")) == first.saga_id
    started = time.monotonic()
    results = _race(16, lambda i: store.create(make_execution(idempotency_key="vanish")))
    assert time.monotonic() - started < 4  # no waiting for a create that will never finish
    winners = {stored.saga_id for stored, created in results if created}
    assert len(winners) == 1 and first.saga_id not in winners
    assert {stored.saga_id for stored, _ in results} == winners
    found = store.find_by_idempotency_key("vanish")
    assert found is not None and found.saga_id in winners


def test_expired_executions_leave_the_listing_and_free_their_idempotency_key(
    redis_cluster: str, unique: str
) -> None:
    prefix = f"t-{unique}-ttl:"
    store = RedisSagaBackend.from_url(f"{redis_cluster}/0?cluster=true&prefix={prefix}&ttl=1")
    try:
        execution = make_execution(idempotency_key="short-lived")
        store.create(execution)
        assert store.update_saga(
            execution.saga_id, {"status": SagaStatus.COMPLETED, "finished_at": now()}
        )
        deadline = time.monotonic() + 10
        while store.client.exists(store.keys.execution(execution.saga_id)):
            assert time.monotonic() < deadline, "the execution did not expire"
            time.sleep(0.05)
        assert ids(store.list(status=SagaStatus.COMPLETED).items) == set()
        assert store.client.zscore(store.keys.index_status("completed"), execution.saga_id) is None
        again, created = store.create(make_execution(idempotency_key="short-lived"))
        assert created and again.saga_id != execution.saga_id
    finally:
        from support import drop_cluster_prefix

        store.close()
        drop_cluster_prefix(redis_cluster, prefix)


def test_wait_on_the_cluster_is_woken_for_executions_on_every_node(
    store: RedisSagaBackend,
) -> None:
    per_node: dict[str, list[Any]] = {n.name: [] for n in store.client.get_primaries()}
    while any(len(chosen) < 3 for chosen in per_node.values()):
        execution = make_execution()
        node = store.client.get_node_from_key(store.keys.execution(execution.saga_id)).name
        if len(per_node[node]) < 3:
            store.create(execution)
            per_node[node].append(execution)
    executions = [e for chosen in per_node.values() for e in chosen]

    def finish() -> None:
        for execution in executions:
            store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})

    results = _race(
        len(executions) + 1,
        lambda i: finish() if i == len(executions) else store.wait(executions[i].saga_id, 20),
    )
    assert all(r is not None and r.status is SagaStatus.COMPLETED for r in results[:-1])
