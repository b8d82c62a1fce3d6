"""Which state store a saga uses, and the Celery settings celery-saga reads.

Order of precedence: the saga's own ``backend=``, then the app's ``saga_backend``
setting, then `set_default_backend()`, then a process-local memory store.
Stores built from URLs are cached, so every task reuses one connection pool.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from celery_saga.backends.base import SagaBackend
from celery_saga.backends.registry import backend_for_reading, backend_from_url

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
#: Stores opened for reading only (`backend_for(..., read_only=True)`), by the same key.
_reading: dict[tuple[str, str], SagaBackend] = {}
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


def get_default_backend(*, read_only: bool = False) -> SagaBackend:
    """The store used when neither the saga nor the app names one."""
    if isinstance(_default, SagaBackend):
        return _default
    return _instance(_default or "memory://", {}, read_only)


def is_fallback(app: Celery | None, explicit: SagaBackend | str | None = None) -> bool:
    """True when nothing names a store: `backend_for` gives the process-local memory store.

    That store is empty in any process but the one that wrote to it, so a tool that
    reads through it (``celery saga list`` without ``-A`` or ``--backend``) says so.
    """
    return explicit is None and setting(app, "saga_backend") is None and _default is None


def setting(app: Celery | None, name: str) -> Any:
    """A celery-saga setting from the app's configuration, or its default."""
    if app is not None:
        conf = app.conf
        if not _unset(conf, name):
            value = conf.get(name)
            if value is not None:
                return value
    return DEFAULTS[name]


_ABSENT = object()


def _unset(conf: Any, name: str) -> bool:
    """True when no layer of Celery's configuration holds `name` under any of its keys.

    Celery finds a missing name by raising and catching a KeyError for each key and
    layer (about 20 us); a step reads settings that are nearly always unset, so they are
    looked up here without exceptions, with Celery's own keys (a namespace's prefix
    included). False, so Celery is asked, when the configuration is not that view.
    """
    to_keys = getattr(type(conf), "_to_keys", None)
    key = getattr(type(conf), "_key", None)
    maps = conf.__dict__.get("maps") if hasattr(conf, "__dict__") else None
    if to_keys is None or key is None or not isinstance(maps, list):
        return False
    keys = [key(conf, k) for k in to_keys(conf, name)]
    return all(layer.get(k, _ABSENT) is _ABSENT for layer in maps for k in keys)


def _instance(url: str, options: dict[str, Any], read_only: bool = False) -> SagaBackend:
    """The cached store for `url`; with `read_only`, one that creates nothing.

    A store this process already opened serves reads too (it is the same store); a
    new one opened for reading is cached apart, so it never serves the writes of a
    saga that would expect its tables or indexes to be created.
    """
    key = (url, repr(sorted(options.items())))
    with _lock:
        found = _by_url.get(key)
        if found is None and read_only:
            found = _reading.get(key)
            if found is None:
                found = _reading[key] = backend_for_reading(url, **options)
        elif found is None:
            found = _by_url[key] = backend_from_url(url, **options)
        return found


def backend_for(
    app: Celery | None, explicit: SagaBackend | str | None = None, *, read_only: bool = False
) -> SagaBackend:
    """The store a saga on `app` uses (see the module docstring for the order).

    With `read_only`, a store named by URL is opened so that it creates nothing
    (`SagaBackend.open_for_reading`): what the read-only CLI commands use.
    """
    if isinstance(explicit, SagaBackend):
        return explicit
    if isinstance(explicit, str):
        return _instance(explicit, dict(setting(app, "saga_backend_options")), read_only)
    configured = setting(app, "saga_backend")
    if isinstance(configured, SagaBackend):
        return configured
    if isinstance(configured, str):
        return _instance(configured, dict(setting(app, "saga_backend_options")), read_only)
    return get_default_backend(read_only=read_only)
