"""The version of celery-saga-core (read by hatchling and by `celery_saga.__version__`)."""

__version__ = "0.5.0"
