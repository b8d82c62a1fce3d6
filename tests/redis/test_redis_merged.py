"""Listings without a status merge the status indexes: the merge step, then real listings."""

from __future__ import annotations

import random

import pytest

from celery_saga.models import SagaStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, merged
from celery_saga_redis.merged import Row

# (buffers, indexes with unread rows) -> (index, id) taken, newest first; what stays.
SAFE = [
    # Every index read to its end: everything is taken, merged newest first.
    (
        {"a": [("x", 5.0), ("y", 2.0)], "b": [("z", 4.0)]},
        set(),
        [("a", "x"), ("b", "z"), ("a", "y")],
        {"a": [], "b": []},
    ),
    # b has unread rows below its last (4): a's row at 2 waits for them.
    (
        {"a": [("x", 5.0), ("y", 2.0)], "b": [("z", 4.0)]},
        {"b"},
        [("a", "x"), ("b", "z")],
        {"a": [("y", 2.0)], "b": []},
    ),
    # Both have unread rows: the higher of their last rows bounds what is taken.
    (
        {"a": [("x", 5.0), ("y", 2.0)], "b": [("z", 4.0), ("w", 3.0)]},
        {"a", "b"},
        [("a", "x"), ("b", "z"), ("b", "w")],
        {"a": [("y", 2.0)], "b": []},
    ),
    # An index with unread rows and nothing buffered: it must be read first.
    ({"a": [("x", 5.0)], "b": []}, {"b"}, [], {"a": [("x", 5.0)], "b": []}),
    # Equal scores: the id decides, descending, as ZREVRANGEBYSCORE orders them.
    (
        {"a": [("m", 3.0), ("b", 3.0)], "b": [("k", 3.0)]},
        {"b"},
        [("a", "m"), ("b", "k")],
        {"a": [("b", 3.0)], "b": []},
    ),
    # One id in two indexes (a cluster's status change in flight): both rows come out,
    # next to each other; the listing keeps one.
    (
        {"a": [("s", 3.0)], "b": [("s", 3.0)]},
        set(),
        [("a", "s"), ("b", "s")],
        {"a": [], "b": []},
    ),
]


@pytest.mark.parametrize(("buffers", "more", "taken", "left"), SAFE)
def test_the_merge_takes_what_no_unread_row_can_come_before(
    buffers: dict[str, list[Row]],
    more: set[str],
    taken: list[tuple[str, str]],
    left: dict[str, list[Row]],
) -> None:
    got = merged.safe(buffers, more)
    assert [(index, row[0]) for index, row in got] == taken
    assert buffers == left


def test_a_create_writes_the_status_indexes_only(store: RedisSagaBackend) -> None:
    execution = make_execution(name="few-entries")
    store.create(execution)
    sid = execution.saga_id
    for index in store.keys.indexes_for("few-entries", "running"):
        assert store.client.zscore(index, sid) is not None
    assert store.client.zscore(store.keys.index_all(), sid) is None
    assert store.client.zscore(store.keys.index_name("few-entries"), sid) is None


def test_listings_across_statuses_are_newest_first_on_every_page(
    store: RedisSagaBackend,
) -> None:
    """Executions of two names spread over every status, many created in the same
    microsecond: each listing without a status, paged by 1, 3 and 50, is exactly the
    executions it filters, newest first, ties by id descending."""
    rng = random.Random(20261204)
    base = 1_800_000_000.0
    executions = []
    for k in range(60):
        name = "merge-a" if k % 3 else "merge-b"
        execution = make_execution(name=name, created_at=base + rng.choice((0, 1, 2, k)))
        store.create(execution)
        status = rng.choice(list(SagaStatus))
        if status is not SagaStatus.RUNNING:
            assert store.update_saga(execution.saga_id, {"status": status})
        executions.append((execution, status))

    def newest_first(name: str | None) -> list[str]:
        chosen = [e for e, _ in executions if name is None or e.saga_name == name]
        chosen.sort(key=lambda e: (e.created_at, e.saga_id), reverse=True)
        return [e.saga_id for e in chosen]

    ours = {e.saga_id for e, _ in executions}
    for name in (None, "merge-a", "merge-b"):
        for limit in (1, 3, 50):
            got: list[str] = []
            cursor = None
            while True:
                page = store.list(name=name, limit=limit, cursor=cursor)
                assert len(page.items) <= limit
                got += [s.saga_id for s in page.items if s.saga_id in ours]
                cursor = page.cursor
                if cursor is None:
                    break
            assert got == newest_first(name), (name, limit)
