"""The Redis store meets the SagaBackend contract, on a real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from celery_saga.backends import SagaBackend
from celery_saga.testing import BackendConformance, Requirements


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
    def finishes_in_one_round_trip(self) -> bool:
        return True

    @property
    def expires_finished(self) -> bool:
        return True


class TestRedisConformance(BackendConformance):
    requirements = Notifies()

    @pytest.fixture
    def backend(self, redis_store_url: str) -> Iterator[SagaBackend]:
        from celery_saga_redis import RedisSagaBackend

        store = RedisSagaBackend.from_url(redis_store_url)
        yield store
        store.close()

    @pytest.fixture
    def store_with_retention(self, redis_store_url: str) -> Iterator[Callable[[int], SagaBackend]]:
        """Stores with ``?ttl=<seconds>`` under this test's key prefix (dropped afterwards)."""
        from celery_saga_redis import RedisSagaBackend

        made: list[RedisSagaBackend] = []

        def make(seconds: int) -> SagaBackend:
            store = RedisSagaBackend.from_url(f"{redis_store_url}&ttl={seconds}")
            made.append(store)
            return store

        yield make
        for store in made:
            store.close()
