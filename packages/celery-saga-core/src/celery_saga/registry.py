"""Sagas registered by name per Celery app, like tasks, so any worker can find one.

A worker that receives a message for saga "order_saga" looks the definition up
here (under the app that runs the task); that is why workers import the modules
that define their sagas. Two different sagas under one name on one app are an
error: at definition time as soon as their plans disagree, and at lookup time if
one is a shorter version of the other.

The definition layer never imports the runtime or the client: they plug in here
instead. The runtime registers a task hook (it instruments every Celery task that
becomes a step or compensation) and the client a launcher (what `Saga.run()` and
`Saga.result()` call).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from celery_saga.errors import SagaDefinitionError, SagaError, SagaNotRegistered

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend
    from celery_saga.definition import SagaDefinition


class Saga(Protocol):
    """What the registry, the runtime and the client need of a saga (`celery_saga.Saga`)."""

    name: str
    defined_in: str
    backend: SagaBackend | str | None
    deadline: float | None

    @property
    def app(self) -> Celery: ...

    @property
    def definition(self) -> SagaDefinition: ...

    def outline(self) -> list[Any]: ...


class Launcher(Protocol):
    """Starts executions and makes handles to them (installed by the client)."""

    def run(
        self, saga: Any, input: dict[str, Any], idempotency_key: str | None, queue: str | None
    ) -> Any: ...

    def handle(self, saga: Any, saga_id: str) -> Any: ...

    def cancel(self, saga: Any, saga_id: str, reason: str | None) -> bool: ...

    def settle(self, saga: Any, saga_id: str, step: str, output: Any, error: str | None) -> Any: ...

    def revert(self, saga: Any, saga_id: str, reason: str | None) -> None: ...


_task_hooks: list[Callable[[Any], None]] = []
_launcher: list[Launcher] = []


def on_task(hook: Callable[[Any], None]) -> None:
    """Call `hook(task)` for each Celery task that becomes a saga step or compensation."""
    if hook not in _task_hooks:
        _task_hooks.append(hook)


def task_added(task: Any) -> None:
    """A Celery task became a step or compensation: run the task hooks on it."""
    for hook in _task_hooks:
        hook(task)


def set_launcher(launcher: Launcher) -> None:
    """Install what `Saga.run()` and `Saga.result()` call."""
    _launcher[:] = [launcher]


def launcher() -> Launcher:
    """The installed launcher (importing `celery_saga` installs it)."""
    if not _launcher:
        raise SagaError("celery_saga is not fully imported: `import celery_saga` first")
    return _launcher[0]


_sagas: dict[str, list[weakref.ReferenceType[Saga]]] = {}
_lock = threading.Lock()


def _live(name: str) -> list[Saga]:
    refs = _sagas.get(name, [])
    alive = [saga for saga in (ref() for ref in refs) if saga is not None]
    if len(alive) != len(refs):  # some were garbage-collected: drop their references
        if alive:
            _sagas[name] = [weakref.ref(saga) for saga in alive]
        else:
            _sagas.pop(name, None)
    return alive


def _conflict(name: str, first: Saga, second: Saga) -> SagaDefinitionError:
    return SagaDefinitionError(
        f"two different sagas are named {name!r} on one Celery app (defined in "
        f"{first.defined_in} and {second.defined_in}); saga names must be unique per app: "
        "rename one of them"
    )


def register(saga: Saga) -> None:
    """Register `saga` under its name, refusing one whose plan disagrees with another's.

    A builder saga registers itself as it grows, so at this point the check is
    that one plan is a prefix of the other.
    """
    outline = saga.outline()
    app = saga.app
    with _lock:
        live = _live(saga.name)
        for other in live:
            if other is saga or other.app is not app:
                continue
            theirs = other.outline()
            shorter, longer = sorted((outline, theirs), key=len)
            if longer[: len(shorter)] != shorter:
                raise _conflict(saga.name, other, saga)
        if all(s is not saga for s in live):
            _sagas.setdefault(saga.name, []).append(weakref.ref(saga))


def lookup(name: str, app: Celery | None = None) -> Saga:
    """The saga registered under `name` (on `app` if given), or SagaNotRegistered."""
    with _lock:
        live = _live(name)
        if len(live) == 1:
            return live[0]  # the common case, on every step: no further checks
        known = sorted(n for n in list(_sagas) if _live(n))
    if app is not None:
        live = [s for s in live if s.app is app] or live
    if not live:
        raise SagaNotRegistered(
            f"saga {name!r} is not registered in this process: make the worker import the "
            "module that defines it (add it to the app's `imports`/`include`, or import it "
            f"from the module given to -A). Registered here: {', '.join(known) or 'none'}"
        )
    newest = live[-1]
    # Only sagas of the same app can disagree; each outline walks the whole plan, so a
    # name registered on several apps (one saga each) is found without walking any.
    others = [other for other in live[:-1] if other.app is newest.app]
    if others:
        outline: list[Any] = newest.outline()
        for other in others:
            if other.outline() != outline:
                raise _conflict(name, other, newest)
    return newest


def registered() -> dict[str, Saga]:
    """The newest saga registered under each name."""
    with _lock:
        return {name: live[-1] for name in list(_sagas) if (live := _live(name))}


def sagas_of(app: Celery) -> dict[str, Saga]:
    """The sagas registered on `app`, by name, sorted (the newest under each name).

    What a tool that shows an app's sagas (the web view's definitions page) lists: the
    sagas the modules given to ``-A`` (and their imports) defined in this process.
    """
    with _lock:
        found: dict[str, Saga] = {}
        for name in list(_sagas):
            mine = [s for s in _live(name) if s.app is app]
            if mine:
                found[name] = mine[-1]
    return dict(sorted(found.items()))


def unregister(name: str) -> None:
    """Forget every saga registered under `name` (tests use this)."""
    with _lock:
        _sagas.pop(name, None)
