"""The MongoDB store meets the SagaBackend contract, on a real server.

Run twice: once as configured (change streams where the server has them, as
SecantusDB and replica sets do), once with ``change_streams=false`` so the
polling `wait` is held to the contract too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from celery_saga.backends import SagaBackend
from celery_saga.testing import BackendConformance, Requirements


class _Mongo(Requirements):
    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        # One unordered bulkWrite; a second request only when a lease was lost.
        return True


class _ChangeStreams(_Mongo):
    @property
    def notifies_completion(self) -> bool:
        # A real standalone mongod has no change streams: that store polls.
        return not os.environ.get("CELERY_SAGA_MONGO_URL")


class TestMongoConformance(BackendConformance):
    requirements = _ChangeStreams()

    @pytest.fixture
    def backend(self, mongo_store_url: str) -> Iterator[SagaBackend]:
        from celery_saga_mongo import MongoSagaBackend

        store = MongoSagaBackend.from_url(mongo_store_url)
        yield store
        store.close()


class TestMongoPollingConformance(BackendConformance):
    requirements = _Mongo()

    @pytest.fixture
    def backend(self, mongo_store_url: str) -> Iterator[SagaBackend]:
        from celery_saga_mongo import MongoSagaBackend

        store = MongoSagaBackend.from_url(mongo_store_url + "&change_streams=false")
        yield store
        store.close()
