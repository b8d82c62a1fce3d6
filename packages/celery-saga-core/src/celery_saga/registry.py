"""Sagas registered by name, like Celery tasks, so any worker can find a definition.

A worker that receives a message for saga "order_saga" looks the definition up
here; that is why workers import the modules that define their sagas. Two
different sagas under one name are an error: at definition time as soon as their
plans disagree, and at lookup time if one is a shorter version of the other.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from celery_saga.errors import SagaDefinitionError, SagaNotRegistered

if TYPE_CHECKING:
    from celery_saga.builder import Saga

_sagas: dict[str, list[weakref.ReferenceType[Saga]]] = {}
_lock = threading.Lock()


def _live(name: str) -> list[Saga]:
    refs = _sagas.get(name, [])
    alive = [saga for saga in (ref() for ref in refs) if saga is not None]
    _sagas[name] = [weakref.ref(saga) for saga in alive]
    return alive


def _conflict(name: str, first: Saga, second: Saga) -> SagaDefinitionError:
    return SagaDefinitionError(
        f"two different sagas are named {name!r} (defined in {first.defined_in} and "
        f"{second.defined_in}); saga names must be unique per process: rename one of them"
    )


def register(saga: Saga) -> None:
    """Register `saga` under its name, refusing one whose plan disagrees with another's.

    A builder saga registers itself as it grows, so at this point the check is
    that one plan is a prefix of the other.
    """
    outline = saga.outline()
    with _lock:
        others = [s for s in _live(saga.name) if s is not saga]
        for other in others:
            theirs = other.outline()
            shorter, longer = sorted((outline, theirs), key=len)
            if longer[: len(shorter)] != shorter:
                raise _conflict(saga.name, other, saga)
        if all(s is not saga for s in _live(saga.name)):
            _sagas.setdefault(saga.name, []).append(weakref.ref(saga))


def lookup(name: str) -> Saga:
    """The saga registered under `name`, or SagaNotRegistered saying what to import."""
    with _lock:
        live = _live(name)
        known = sorted(n for n in _sagas if _live(n))
    if not live:
        raise SagaNotRegistered(
            f"saga {name!r} is not registered in this process: make the worker import the "
            "module that defines it (add it to the app's `imports`/`include`, or import it "
            f"from the module given to -A). Registered here: {', '.join(known) or 'none'}"
        )
    newest = live[-1]
    outline: list[Any] = newest.outline()
    for other in live[:-1]:
        if other.outline() != outline:
            raise _conflict(name, other, newest)
    return newest


def registered() -> dict[str, Saga]:
    """The newest saga registered under each name."""
    with _lock:
        names = list(_sagas)
        return {name: live[-1] for name in names if (live := _live(name))}


def unregister(name: str) -> None:
    """Forget every saga registered under `name` (tests use this)."""
    with _lock:
        _sagas.pop(name, None)
