"""Settings of the example shop: orders in PostgreSQL, sagas on Celery with Redis.

What a deployment changes comes from the environment, with defaults for a local
PostgreSQL and Redis:

- ``DJANGO_SHOP_DATABASE_URL``: the PostgreSQL database of the orders;
- ``CELERY_BROKER_URL``: the broker (Celery also reads this variable itself);
- ``DJANGO_SHOP_SAGA_BACKEND``: the state store of the saga executions;
- ``DJANGO_SHOP_QUEUE``: the queue of the shop's tasks;
- ``DJANGO_SHOP_BROKER_KEY_PREFIX``: a prefix for every broker key in Redis, so
  several shops (or test runs) can share one Redis database.

No sessions, users or CSRF: the example is a small JSON API, reduced to what the
saga needs.
"""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = ["orders"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "django_shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_db = urlsplit(
    os.environ.get("DJANGO_SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/django_shop")
)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": unquote(_db.username or ""),
        "PASSWORD": unquote(_db.password or ""),
        "HOST": _db.hostname or "",
        "PORT": str(_db.port or ""),
    }
}

# Celery, read by django_shop/celery.py under the namespace CELERY: CELERY_X is `x`.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DJANGO_SHOP_QUEUE", "celery")
if os.environ.get("DJANGO_SHOP_BROKER_KEY_PREFIX"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "global_keyprefix": os.environ["DJANGO_SHOP_BROKER_KEY_PREFIX"]
    }
# celery-saga's settings, by the same rule: where the saga executions are kept.
CELERY_SAGA_BACKEND = os.environ.get(
    "DJANGO_SHOP_SAGA_BACKEND", "redis://127.0.0.1:6379/1?prefix=django-shop:"
)
