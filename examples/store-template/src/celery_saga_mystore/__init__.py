"""celery-saga-mystore: a celery-saga state store (a template: see README.md)."""

from __future__ import annotations

from celery_saga_mystore.backend import MyStore

__all__ = ["MyStore"]
__version__ = "0.1.0"
