"""celery-saga settings given under a Celery namespace, as a Django project gives them.

``app.config_from_object("django.conf:settings", namespace="CELERY")`` makes Celery
read ``CELERY_BROKER_URL`` for ``broker_url``; celery-saga's ``saga_*`` settings must
follow the same rule (``CELERY_SAGA_BACKEND`` for ``saga_backend``). A plain object
stands in for Django's settings here: Celery treats both alike, so this runs without
Django, on every Celery version of the matrix.
"""

from __future__ import annotations

from celery import Celery

from celery_saga.backends.memory import MemorySagaBackend
from celery_saga.config import DEFAULTS, backend_for, setting


class DjangoLikeSettings:
    """Upper-case attributes, as in a Django settings module."""

    CELERY_BROKER_URL = "memory://"
    CELERY_SAGA_BACKEND = "memory://celery-namespace-test"
    CELERY_SAGA_LEASE_SECONDS = 7.5
    SAGA_QUEUE = "not-read: it lacks the CELERY_ prefix"


class WithOptions(DjangoLikeSettings):
    CELERY_SAGA_BACKEND_OPTIONS = {"ttl": 60}


def _app(settings: type = DjangoLikeSettings) -> Celery:
    app = Celery("namespaced", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    return app


def test_namespaced_settings_reach_saga_settings() -> None:
    """Each CELERY_SAGA_* value is what `setting()` returns for its saga_* name."""
    app = _app()
    assert setting(app, "saga_backend") == "memory://celery-namespace-test"
    assert setting(app, "saga_lease_seconds") == 7.5
    assert setting(_app(WithOptions), "saga_backend_options") == {"ttl": 60}


def test_unset_namespaced_settings_keep_their_defaults() -> None:
    """A saga setting missing from the namespace is the default, not an un-prefixed name."""
    app = _app()
    assert setting(app, "saga_queue") is DEFAULTS["saga_queue"] is None
    assert setting(app, "saga_recovery_max_sends") == DEFAULTS["saga_recovery_max_sends"]


def test_the_store_comes_from_the_namespaced_setting() -> None:
    """`backend_for` builds the store that CELERY_SAGA_BACKEND names."""
    store = backend_for(_app())
    assert store is MemorySagaBackend.from_url("memory://celery-namespace-test")
    assert store is not backend_for(None)  # not the process default
