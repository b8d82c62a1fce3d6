"""The version of celery-saga-mongo."""

__version__ = "0.5.0"
