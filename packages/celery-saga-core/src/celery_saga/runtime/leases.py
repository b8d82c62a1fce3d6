"""Leases: who runs an attempt right now, kept alive by one heartbeat per worker process.

Starting an attempt records a lease (owner ``host/pid/thread/task-id``, expiry
`saga_lease_seconds` ahead); a step that its stage marked started gets its lease
from the first beat instead, so a short step costs no lease write at all. While a
task runs, its process's heartbeat thread renews every lease the process holds, in
one store call per store per beat, every third of the lease. Recovery takes an
attempt over only once its lease has expired. The task never waits on the
heartbeat: a hung store call delays renewals, never the step.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery_saga.backends.base import Lease
from celery_saga.config import setting
from celery_saga.runtime.log import logger

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend

_HOST = socket.gethostname()


def owner_of(task_id: str) -> str:
    """The lease owner name of the attempt `task_id` run here: host, process, thread, task.

    The thread is part of it because a threads pool (or a redelivered copy taken by
    another thread of the same process) runs the same task id twice at once.
    """
    return f"{_HOST}/{os.getpid()}/{threading.get_ident()}/{task_id}"


def fresh_lease(sent_at: float) -> dict[str, Any]:
    """The fields that start a new attempt's life: nobody holds it, sent at `sent_at`."""
    return {"lease_owner": None, "lease_expires_at": None, "sent_at": sent_at, "sends": 0}


def lease_seconds(app: Celery | None) -> float:
    """How long a lease lasts without renewal (`saga_lease_seconds`)."""
    return float(setting(app, "saga_lease_seconds"))


def until_next_beat(now: float, last: float, interval: float, longest: float = 1.0) -> float:
    """How long the heartbeat sleeps: until `interval` after the `last` beat began, and at
    most `longest` (it wakes that often to see a shorter lease), never less than 0."""
    return max(0.0, min(last + interval - now, longest))


class Heartbeat:
    """The leases one process holds, and the daemon thread that renews them.

    Made afresh in a forked child (the parent's thread does not survive a fork), and
    started on the first lease a process takes: in a prefork child, a solo worker or
    a threads pool alike.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._held: dict[Lease, tuple[SagaBackend, float]] = {}
        self._thread: threading.Thread | None = None
        self.beats = 0  # renewal calls made (read by tests and the benchmark)

    def hold(self, backend: SagaBackend, lease: Lease, seconds: float) -> None:
        """Keep `lease` renewed until `release` (claims it first if it has no owner)."""
        with self._lock:
            self._held[lease] = (backend, seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celery-saga-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, lease: Lease) -> None:
        """Stop renewing `lease` (its task ended)."""
        with self._lock:
            self._held.pop(lease, None)

    def held(self) -> list[Lease]:
        """The leases being renewed now."""
        with self._lock:
            return list(self._held)

    def _interval(self) -> float:
        with self._lock:
            seconds = [s for _, s in self._held.values()]
        return max(0.05, min(seconds, default=30.0) / 3)

    def _run(self) -> None:
        # Sleeps until the next beat is due, and at most a second, so a lease shorter
        # than those already held is renewed in time. A beat is due a third of the lease
        # after the previous one began: the time its store call takes is not added.
        last = time.monotonic()
        while True:
            self._wake.wait(until_next_beat(time.monotonic(), last, self._interval()))
            self._wake.clear()
            started = time.monotonic()
            if started - last >= self._interval():
                self.beat()
                last = started

    def beat(self) -> None:
        """Renew every held lease now: one store call per store."""
        with self._lock:
            by_store: dict[int, tuple[SagaBackend, float, list[Lease]]] = {}
            for lease, (backend, seconds) in self._held.items():
                by_store.setdefault(id(backend), (backend, seconds, []))[2].append(lease)
        for backend, seconds, leases in by_store.values():
            try:
                lost = backend.renew_leases(leases, time.time() + seconds)
            except Exception as exc:  # the store is away: the next beat tries again
                logger.warning("saga lease renewal failed (%r); retrying next beat", exc)
                continue
            self.beats += 1
            if lost:
                with self._lock:
                    for lease in lost:
                        self._held.pop(lease, None)
                for lease in lost:  # usually its step just finished; else it was taken over
                    logger.log(
                        logging.INFO,
                        "[saga %s step %s] lease of attempt %s ended: the attempt moved on, "
                        "or recovery took it over (then its outcome is recorded as late)",
                        lease.saga_id,
                        lease.index,
                        lease.attempt,
                    )


_heartbeat: list[Heartbeat] = []
_guard = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child starts with no heartbeat, and a lock no parent thread holds."""
    global _guard
    _guard = threading.Lock()
    _heartbeat.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def heartbeat() -> Heartbeat:
    """This process's heartbeat (a new one after a fork)."""
    with _guard:
        if not _heartbeat or _heartbeat[0]._pid != os.getpid():
            _heartbeat[:] = [Heartbeat()]
        return _heartbeat[0]


@contextmanager
def holding(backend: SagaBackend, lease: Lease, seconds: float) -> Iterator[None]:
    """Renew `lease` while the block runs (the step's or compensation's body)."""
    beat = heartbeat()
    beat.hold(backend, lease, seconds)
    try:
        yield
    finally:
        beat.release(lease)
