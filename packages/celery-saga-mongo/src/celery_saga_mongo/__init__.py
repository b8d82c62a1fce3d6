"""celery-saga-mongo: the MongoDB state store for celery-saga (``mongodb://``, ``mongodb+srv://``)."""

from __future__ import annotations

from celery_saga_mongo.backend import MongoSagaBackend
from celery_saga_mongo.version import __version__

__all__ = ["MongoSagaBackend", "__version__"]
