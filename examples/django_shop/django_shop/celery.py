"""The shop's Celery app, configured from Django's settings.

``namespace="CELERY"`` makes Celery read each of its settings from the Django setting
of the same name in upper case with ``CELERY_`` in front (``CELERY_BROKER_URL`` for
``broker_url``); celery-saga's ``saga_*`` settings follow the same rule
(``CELERY_SAGA_BACKEND`` for ``saga_backend``). Start a worker with
``celery -A django_shop worker`` from the folder of ``manage.py``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_shop.settings")

app = Celery("django_shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Workers import each installed app's tasks.py (the step tasks) and sagas.py (the
# sagas): a worker carries a saga forward only if it imported the saga's definition.
app.autodiscover_tasks()
app.autodiscover_tasks(related_name="sagas")
