"""Find a state store by URL scheme: built-ins, then `register()`, then entry points.

Modelled on kombu's transport aliases and Celery's backend loader: a flat table
from scheme to ``"package.module:Class"``, resolved only when asked for and cached.
Third-party stores add a scheme by declaring an entry point in the group
``celery_saga.backends``. ``postgresql+psycopg://`` splits at the ``+``: the first
part picks the store, the whole URL goes to it.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from celery_saga.backends.base import SagaBackend
from celery_saga.errors import BackendNotFound

ENTRY_POINT_GROUP = "celery_saga.backends"

BUILTIN: dict[str, str] = {"memory": "celery_saga.backends.memory:MemorySagaBackend"}

#: Schemes our own packages provide, and what to install to get them.
INSTALL_HINTS: dict[str, str] = {
    "redis": "celery-saga-redis",
    "rediss": "celery-saga-redis",
    "postgresql": "celery-saga-sql",
    "postgres": "celery-saga-sql",
    "mysql": "celery-saga-sql",
    "mariadb": "celery-saga-sql",
    "sqlite": "celery-saga-sql",
    "mongodb": "celery-saga-mongo",
    "mongodb+srv": "celery-saga-mongo",
}

#: The extra of the `celery-saga` meta-package that brings each scheme's store (and its
#: driver: the `postgresql` and `mysql` extras install celery-saga-sql with psycopg or
#: PyMySQL).
INSTALL_EXTRAS: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sql",
    "mongodb": "mongo",
    "mongodb+srv": "mongo",
}

_registered: dict[str, str | type[SagaBackend]] = {}
_cache: dict[str, type[SagaBackend]] = {}
_lock = threading.Lock()


def register(scheme: str, target: str | type[SagaBackend]) -> None:
    """Serve `scheme` with `target` (a class or ``"module:Class"``) without packaging.

    Later registrations win over entry points and built-ins, as in SQLAlchemy's
    `PluginLoader.register`; tests and applications use this.
    """
    with _lock:
        _registered[scheme.lower()] = target
        _cache.pop(scheme.lower(), None)


def installed_schemes() -> dict[str, str]:
    """Every scheme this process can serve, mapped to where its class lives."""
    found: dict[str, str] = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name.lower()] = ep.value
    for scheme, target in _registered.items():
        found[scheme] = target if isinstance(target, str) else _qualname(target)
    return dict(sorted(found.items()))


def backend_class(scheme: str) -> type[SagaBackend]:
    """The store class serving `scheme` (``"redis"``, ``"postgresql+psycopg"``, ...)."""
    scheme = scheme.lower()
    with _lock:
        cached = _cache.get(scheme)
    if cached is not None:
        return cached
    table = installed_schemes()
    candidates = [scheme] + ([scheme.split("+", 1)[0]] if "+" in scheme else [])
    for candidate in candidates:
        target: str | type[SagaBackend] | None = _registered.get(candidate) or table.get(candidate)
        if target is None:
            continue
        cls = _load(target, candidate)
        with _lock:
            _cache[scheme] = cls
        return cls
    raise BackendNotFound(_not_found_message(scheme, table))


def backend_from_url(url: str, **options: Any) -> SagaBackend:
    """Build the store a URL names, e.g. ``backend_from_url("redis://localhost/0")``."""
    if not isinstance(url, str) or "://" not in url:
        raise BackendNotFound(
            f"saga backend {url!r} is not a URL: use one such as 'redis://localhost:6379/0', "
            "'postgresql+psycopg://user@host/db', 'sqlite:///sagas.db' or 'memory://', "
            "or pass a SagaBackend instance"
        )
    scheme = urlsplit(url).scheme
    return backend_class(scheme).from_url(url, **options)


def backend_for_reading(url: str, **options: Any) -> SagaBackend:
    """Like `backend_from_url`, but the store creates nothing (`SagaBackend.open_for_reading`).

    What read-only tools use: at a URL where no store exists, its operations raise
    `StoreNotFound` instead of creating an empty one.
    """
    if not isinstance(url, str) or "://" not in url:
        return backend_from_url(url, **options)  # the same error for a non-URL
    return backend_class(urlsplit(url).scheme).open_for_reading(url, **options)


def _load(target: str | type[SagaBackend], scheme: str) -> type[SagaBackend]:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = install_hint(scheme)
        extra = f" ({hint})" if hint else ""
        raise BackendNotFound(
            f"the saga backend for {scheme!r} ({target}) could not be imported: {exc}{extra}"
        ) from exc
    cls = getattr(module, attr) if attr else module
    if not (isinstance(cls, type) and issubclass(cls, SagaBackend)):
        raise BackendNotFound(f"{target} (scheme {scheme!r}) is not a SagaBackend subclass")
    return cls


def _not_found_message(scheme: str, table: dict[str, str]) -> str:
    base = scheme.split("+", 1)[0]
    message = f"no saga backend is installed for the URL scheme {scheme!r}."
    hint = install_hint(scheme) or install_hint(base)
    if hint:
        message += f" Install it with: {hint}."
    else:
        close = difflib.get_close_matches(scheme, list(table) + list(INSTALL_HINTS), n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
    message += f" Installed schemes: {', '.join(table) or 'none'}."
    return message


def install_hint(scheme: str) -> str | None:
    """What to install for one of our schemes, e.g. ``pip install "celery-saga[postgresql]"``.

    The meta-package's extra (the store with its driver), then the store package alone;
    None for a scheme none of our packages serves.
    """
    scheme = scheme.lower()
    extra = INSTALL_EXTRAS.get(scheme)
    if extra is None:
        return None
    package = INSTALL_HINTS[scheme]
    if extra in ("postgresql", "mysql"):
        package = f'"{package}[{extra}]"'
    return f'pip install "celery-saga[{extra}]"  (or: pip install {package})'


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
