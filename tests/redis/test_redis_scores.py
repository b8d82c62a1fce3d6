"""Listing indexes scored in whole microseconds, and entries of the layout before (seconds)."""

from __future__ import annotations

import math

import pytest

from celery_saga.models import SagaStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, scores, scripts, step_scripts

# created_at -> its score: whole microseconds, half up, never below the floor.
SCORES = [
    (1_700_000_000.0, 1_700_000_000_000_000),
    (1_700_000_000.5, 1_700_000_000_500_000),
    (1_700_000_000.000_25, 1_700_000_000_000_250),
    (1_796_314_415.25, 1_796_314_415_250_000),
    (1_000_000.0, scores.FLOOR),
    (12.5, scores.FLOOR),
]


@pytest.mark.parametrize(("created_at", "expected"), SCORES)
def test_a_score_is_the_creation_time_in_whole_microseconds(
    created_at: float, expected: int
) -> None:
    assert scores.score(created_at) == expected


def test_the_scripts_score_a_creation_time_as_python_does(store: RedisSagaBackend) -> None:
    # The status and rescoring scripts score a stored created_at with `scores.LUA`.
    times = [1_796_314_415.0274415 + k * 0.000_000_37 for k in range(200)]
    times += [1_700_000_000.0 + k / 7 for k in range(200)] + [12.5, 1_000_000.0]
    lua = (
        scores.LUA
        + """
    local out = {}
    for k = 1, #ARGV do out[k] = index_score(ARGV[k]) end
    return out
    """
    )
    key = store.keys.index_all()  # any key: the script touches none
    got = store.client.eval(lua, 1, key, *(repr(t) for t in times))
    assert [int(s) for s in got] == [scores.score(t) for t in times]
    for script in (scripts.UPDATE_SAGA, step_scripts.FINISH_STEP, scripts.RESCORE):
        assert scores.LUA in script


def test_index_entries_are_integers_whatever_writes_them(store: RedisSagaBackend) -> None:
    execution = make_execution(created_at=1_796_314_415.0274415)
    store.create(execution)
    store.update_saga(execution.saga_id, {"status": SagaStatus.FAILED, "finished_at": 2.0})
    indexes = [*store.keys.indexes_for(execution.saga_name, "failed")]
    for index in indexes:
        value = store.client.zscore(index, execution.saga_id)
        assert value == scores.score(execution.created_at), index
    for index in store.keys.indexes_for(execution.saga_name, execution.status.value):
        assert store.client.zscore(index, execution.saga_id) is None


def _to_seconds(store: RedisSagaBackend, index: str) -> None:
    """Score every entry of `index` as the layout before this one did: in seconds."""
    rows = store.client.zrange(index, 0, -1, withscores=True)
    for saga_id, _ in rows:
        created_at = store.get(saga_id)
        assert created_at is not None
        store.client.zadd(index, {saga_id: created_at.created_at})


def test_entries_scored_in_seconds_are_rescored_before_a_listing(
    store: RedisSagaBackend,
) -> None:
    old = [make_execution(created_at=1_700_000_000.25 + k) for k in range(5)]
    new = [make_execution(created_at=1_800_000_000.75 + k) for k in range(3)]
    for execution in old + new:
        store.create(execution)
    index = store.keys.index_status("running")
    _to_seconds(store, index)  # every entry in seconds: those of `old` and of `new` alike
    for execution in new:  # `new` written by this version after the upgrade
        store.client.zadd(index, {execution.saga_id: scores.score(execution.created_at)})

    ids, cursor = [], None
    while True:
        page = store.list(limit=3, cursor=cursor)
        ids += [s.saga_id for s in page.items]
        cursor = page.cursor
        if cursor is None:
            break
    newest_first = sorted(old + new, key=lambda e: e.created_at, reverse=True)
    assert ids == [e.saga_id for e in newest_first]
    rows = store.client.zrange(index, 0, -1, withscores=True)
    assert sorted(rows, key=lambda r: r[1]) == [
        (e.saga_id, scores.score(e.created_at)) for e in reversed(newest_first)
    ]
    listed = store.list(created_after=old[2].created_at, created_before=new[1].created_at)
    assert [s.saga_id for s in listed.items] == [new[0].saga_id, old[4].saga_id, old[3].saga_id]


def test_rescoring_never_puts_back_an_entry_removed_meanwhile(store: RedisSagaBackend) -> None:
    index = store.keys.index_status("running")
    store.client.zadd(index, {"kept": 1_700_000_000.5})
    rescore = store.client.register_script(scripts.RESCORE)
    assert rescore(keys=[index], args=[10, scores.FLOOR]) == 1
    store.client.zrem(index, "kept")
    assert rescore(keys=[index], args=[10, scores.FLOOR]) == 0
    assert store.client.zcard(index) == 0


def test_bounds_finer_than_a_microsecond_are_kept_exactly(store: RedisSagaBackend) -> None:
    first = make_execution(created_at=1_796_314_415.000_000_1)
    second = make_execution(created_at=1_796_314_415.000_000_3)
    assert scores.score(first.created_at) == scores.score(second.created_at)
    for execution in (first, second):
        store.create(execution)
    before = store.list(created_before=second.created_at).items
    assert [s.saga_id for s in before] == [first.saga_id]
    after = store.list(created_after=first.created_at).items
    assert [s.saga_id for s in after] == [second.saga_id]
    both = store.list(created_after=math.nextafter(first.created_at, 0)).items
    assert {s.saga_id for s in both} == {first.saga_id, second.saga_id}
