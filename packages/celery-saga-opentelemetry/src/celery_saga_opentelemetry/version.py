"""The version of celery-saga-opentelemetry."""

__version__ = "0.1.0"
