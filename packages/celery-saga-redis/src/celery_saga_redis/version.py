"""The version of celery-saga-redis."""

__version__ = "0.4.0"
