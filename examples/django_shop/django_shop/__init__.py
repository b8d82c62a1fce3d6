"""The example shop's Django project.

The Celery app is imported here, as Celery's Django guide does it, so it is the
current app as soon as Django loads: ``@shared_task`` tasks bind to it.
"""

from django_shop.celery import app as celery_app

__all__ = ("celery_app",)
