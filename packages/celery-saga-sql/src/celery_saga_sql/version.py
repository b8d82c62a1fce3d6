"""The version of celery-saga-sql."""

__version__ = "0.5.0"
