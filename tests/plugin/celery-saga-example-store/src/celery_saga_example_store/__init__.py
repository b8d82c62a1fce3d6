"""An example celery-saga state store on SQLite, for store authors to copy from."""

from __future__ import annotations

from celery_saga_example_store.store import ExampleStore

__all__ = ["ExampleStore"]
__version__ = "0.2.0"
