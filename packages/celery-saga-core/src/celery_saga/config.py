"""Which state store a saga uses, and the Celery settings celery-saga reads.

Order of precedence: the saga's own ``backend=``, then the app's ``saga_backend``
setting, then `set_default_backend()`, then a process-local memory store.
Stores built from URLs are cached, so every task reuses one connection pool.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from celery_saga.backends.base import SagaBackend
from celery_saga.backends.registry import backend_from_url

if TYPE_CHECKING:
    from celery import Celery

#: Celery settings read by celery-saga, with their defaults.
DEFAULTS: dict[str, Any] = {
    "saga_backend": None,
    "saga_backend_options": {},
    "saga_queue": None,
    "saga_compensation_max_retries": 3,
    "saga_compensation_retry_backoff": 1.0,
    "saga_compensation_retry_backoff_max": 60.0,
    "saga_output_max_bytes": 1_048_576,
    "saga_recovery_stalled_after": 300.0,
    "saga_recovery_max_sends": 5,
    "saga_lease_seconds": 30.0,
}

_default: SagaBackend | str | None = None
_by_url: dict[tuple[str, str], SagaBackend] = {}
_lock = threading.Lock()


def set_default_backend(backend: SagaBackend | str | None) -> None:
    """Use `backend` (an instance or a URL such as ``"redis://localhost/0"``) by default.

    Sagas with their own ``backend=`` and apps with a ``saga_backend`` setting
    keep theirs. ``None`` goes back to the process-local memory store.
    """
    global _default
    if backend is not None and not isinstance(backend, SagaBackend | str):
        raise TypeError(
            "set_default_backend() takes a SagaBackend or a URL string, "
            f"got {type(backend).__name__}"
        )
    if isinstance(backend, str):
        _instance(backend, {})  # fail now on an unknown scheme, not at first use
    _default = backend


def get_default_backend() -> SagaBackend:
    """The store used when neither the saga nor the app names one."""
    if isinstance(_default, SagaBackend):
        return _default
    return _instance(_default or "memory://", {})


def setting(app: Celery | None, name: str) -> Any:
    """A celery-saga setting from the app's configuration, or its default."""
    if app is not None:
        value = app.conf.get(name)
        if value is not None:
            return value
    return DEFAULTS[name]


def _instance(url: str, options: dict[str, Any]) -> SagaBackend:
    key = (url, repr(sorted(options.items())))
    with _lock:
        found = _by_url.get(key)
        if found is None:
            found = _by_url[key] = backend_from_url(url, **options)
        return found


def backend_for(app: Celery | None, explicit: SagaBackend | str | None = None) -> SagaBackend:
    """The store a saga on `app` uses (see the module docstring for the order)."""
    if isinstance(explicit, SagaBackend):
        return explicit
    if isinstance(explicit, str):
        return _instance(explicit, dict(setting(app, "saga_backend_options")))
    configured = setting(app, "saga_backend")
    if isinstance(configured, SagaBackend):
        return configured
    if isinstance(configured, str):
        return _instance(configured, dict(setting(app, "saga_backend_options")))
    return get_default_backend()
