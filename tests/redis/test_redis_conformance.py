"""The Redis store meets the SagaBackend contract, on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_saga.backends import SagaBackend
from celery_saga.testing import BackendConformance


class TestRedisConformance(BackendConformance):
    @pytest.fixture
    def backend(self, redis_store_url: str) -> Iterator[SagaBackend]:
        from celery_saga_redis import RedisSagaBackend

        store = RedisSagaBackend.from_url(redis_store_url)
        yield store
        store.close()
