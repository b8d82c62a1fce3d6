"""The version of celery-saga-redis."""

__version__ = "0.5.0"
