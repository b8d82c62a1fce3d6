"""A MongoDB store opened for reading creates nothing: no index, so no collection.

`MongoSagaBackend.open_for_reading` (what ``celery saga list`` / ``show`` use) is the
store with ``create_indexes=False``: at a mistyped URL its reads find nothing, and the
collection (and database) a first use would create by making the indexes never appears.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery_saga.backends import backend_for_reading
from celery_saga.testing import make_execution
from celery_saga_mongo import MongoSagaBackend


def test_reading_a_missing_collection_creates_nothing(mongo_store_url: str) -> None:
    store = backend_for_reading(mongo_store_url)
    assert isinstance(store, MongoSagaBackend)
    try:
        assert store.list().items == []
        assert store.get(make_execution().saga_id) is None
        names = store.client[store.database_name].list_collection_names()
        assert store.executions.name not in names
    finally:
        store.close()


def test_a_store_opened_for_reading_reads_what_is_there(
    mongo_store_url: str, make_store: Callable[..., Any]
) -> None:
    writer = make_store()
    execution = make_execution(name="order")
    writer.create(execution)
    reader = MongoSagaBackend.open_for_reading(mongo_store_url)
    try:
        found = reader.get(execution.saga_id)
        assert found is not None and found.saga_name == "order"
        assert [s.saga_id for s in reader.list().items] == [execution.saga_id]
    finally:
        reader.close()
