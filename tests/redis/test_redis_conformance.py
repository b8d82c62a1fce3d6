"""The Redis store meets the SagaBackend contract, on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_saga.backends import SagaBackend
from celery_saga.testing import BackendConformance, Requirements


class Notifies(Requirements):
    @property
    def notifies_completion(self) -> bool:
        return True


class TestRedisConformance(BackendConformance):
    requirements = Notifies()

    @pytest.fixture
    def backend(self, redis_store_url: str) -> Iterator[SagaBackend]:
        from celery_saga_redis import RedisSagaBackend

        store = RedisSagaBackend.from_url(redis_store_url)
        yield store
        store.close()
