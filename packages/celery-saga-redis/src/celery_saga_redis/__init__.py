"""celery-saga-redis: the Redis state store for celery-saga (``redis://``, ``rediss://``)."""

from __future__ import annotations

from celery_saga_redis.backend import RedisSagaBackend
from celery_saga_redis.version import __version__

__all__ = ["RedisSagaBackend", "__version__"]
