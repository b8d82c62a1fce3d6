"""The version of celery-saga-web."""

__version__ = "0.1.0"
