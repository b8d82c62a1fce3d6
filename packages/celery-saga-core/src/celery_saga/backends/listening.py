"""Waiting from threads on one shared connection: `SharedListener`, `Waiter`, `wait_woken`.

A store whose server announces finished executions (Redis pub/sub, PostgreSQL NOTIFY)
serves every `SagaBackend.wait` of a store object (every ``SagaResult.get()``) from one
connection instead of one per call. A waiting thread joins the listener with a topic
(the announcement it waits for) before it reads the execution, so an announcement made
after that read cannot be missed; a dispatcher thread, the only reader of the
connection, wakes the waiters of each topic announced. With no waiter for `IDLE`
seconds the dispatcher closes the connection, and the next waiter opens a new one. A
lost connection wakes every waiter: each reads again and joins anew, on a new
connection. Only the dispatcher closes its connection: `close()` interrupts its read
(a store shuts the socket down) and waits for it to go, so a close from another thread
never frees a descriptor number that a read in progress still holds.

Fork-safe: a child process starts with no connection and no dispatcher (the parent's
are left alone) and opens its own on its first wait. A store subclasses `SharedListener`
for its server (`celery_saga_redis.listener`, `celery_saga_sql.listener`); the driver is
imported there, so core needs none. The asyncio counterpart is `celery_saga.backends.waiting`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from celery_saga.backends.writes import Outcome
from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus

__all__ = ["IDLE", "SharedListener", "Waiter", "Woken", "wait_woken", "wait_woken_outcome"]

logger = logging.getLogger("celery_saga.waiting")

#: Seconds the connection stays open with nobody waiting.
IDLE = 10.0
#: Longest wait for the server to confirm a topic's subscription (the caller then goes on
#: reading the execution now and then, without the announcement).
CONFIRM_TIMEOUT = 10.0
#: Seconds the dispatcher blocks in one read (it checks for idleness in between).
POLL = 1.0
#: Longest wait in `close()` for the dispatcher to close its connection and end.
CLOSE_TIMEOUT = 5.0


class Woken(threading.Event):
    """A waiter's event, set when its topic is announced; `said` is what the announcement
    said (None when the store's announcements say nothing, or after a lost connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.said: str | None = None

    def clear(self) -> None:
        self.said = None
        super().clear()


class Waiter:
    """One waiter's membership of a topic; `woken` is set when the topic is announced."""

    def __init__(self, listener: SharedListener, topic: str) -> None:
        self.listener = listener
        self.topic = topic
        self.woken = Woken()
        self.generation = -1

    def wait(self, timeout: float) -> bool:
        """Sleep until woken, or `timeout` seconds; then the caller reads again.

        True when woken (an announcement, or a lost connection). After a lost
        connection it joins the listener's new one and returns False at once.
        """
        if self.generation != self.listener.generation:
            self.listener.join(self, timeout)
            return False
        return self.woken.wait(timeout)


class SharedListener(abc.ABC):
    """Announcements for the waits of one store object, on one connection.

    A subclass opens the connection (`open`), reads it (`read`) and interrupts a read
    (`interrupt`); where its server subscribes topic by topic, it also overrides
    `enter`, `exit`, `received` and `dropped`.
    """

    #: The dispatcher thread's name.
    thread_name: ClassVar[str] = "celery-saga-waits"

    def __init__(self, idle: float = IDLE) -> None:
        self.idle = idle
        self._reset()
        _listeners.add(self)

    # -- what a store provides ---------------------------------------------------------------
    @abc.abstractmethod
    def open(self) -> Any:
        """A new connection, ready to receive the announcements (no topic yet)."""

    @abc.abstractmethod
    def read(self, conn: Any, timeout: float) -> Iterable[Any]:
        """What arrives on `conn` within `timeout` seconds (each given to `received`);
        raises when the connection is lost."""

    @abc.abstractmethod
    def interrupt(self, conn: Any) -> None:
        """End a read in progress on `conn` at once, without closing it."""

    def close_connection(self, conn: Any) -> None:
        """Close `conn` (the dispatcher's last act)."""
        conn.close()

    def enter(self, conn: Any, topic: str) -> threading.Event | None:
        """The first waiter of `topic` joined (lock held): subscribe it if the server
        needs that; an event set once the server confirmed, or None (nothing to wait)."""
        return None

    def exit(self, conn: Any, topic: str) -> None:
        """The last waiter of `topic` left (lock held): unsubscribe it if need be."""

    def received(self, message: Any) -> None:
        """Handle one message `read` gave (lock held): by default a topic to `wake`."""
        self.wake(str(message))

    def dropped(self) -> None:
        """The connection went (lock held): forget what `enter` and `received` kept."""

    # -- the machinery ---------------------------------------------------------------------------
    def _reset(self) -> None:
        """Forget every connection and waiter (new, closed, or in a forked child)."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        #: topic -> the events of its waiters.
        self._topics: dict[str, set[Woken]] = {}
        #: topic -> set once the server confirmed its subscription (see `enter`).
        self._ready: dict[str, threading.Event] = {}
        #: Bumped whenever the connection goes: a waiter of an older one joins again.
        self.generation = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} topics={len(self._topics)} connected={self._conn is not None}>"
        )

    @property
    def topics(self) -> dict[str, set[Woken]]:
        """The topics waited for now, with their waiters' events (read under `lock`)."""
        return self._topics

    @property
    def lock(self) -> threading.Lock:
        """The lock every change of the listener's state is made under."""
        return self._lock

    @contextlib.contextmanager
    def waiting(self, topic: str, timeout: float | None = None) -> Iterator[Waiter]:
        """Be a waiter of `topic` for the block, joined (and confirmed, where the server
        confirms; at most `timeout` and `CONFIRM_TIMEOUT` seconds) from its start."""
        waiter = Waiter(self, topic)
        try:
            self.join(waiter, timeout)
            yield waiter
        finally:
            self._leave(waiter)

    def join(self, waiter: Waiter, timeout: float | None = None) -> None:
        """Add `waiter` on the live connection (opening one if need be); wait for its
        topic's subscription to be confirmed, where the server confirms."""
        if self._pid != os.getpid():  # a fork this listener was not told about
            self._reset()
        with self._lock:
            events = self._topics.get(waiter.topic) if self._conn is not None else None
            if events is None:
                events = self._first_waiter(waiter.topic)
            ready = self._ready.get(waiter.topic)
            events.add(waiter.woken)
            waiter.generation = self.generation
        if ready is not None:
            limit = CONFIRM_TIMEOUT if timeout is None else min(timeout, CONFIRM_TIMEOUT)
            ready.wait(max(0.0, limit))

    def _first_waiter(self, topic: str) -> set[Woken]:
        """Enter `topic` on the live connection (lock held). A connection that fails
        there (lost, and not yet seen so by the dispatcher) is dropped, and the topic
        entered on a new one: only the dispatcher reads a connection, so a waiter never
        reconnects one the dispatcher may be reading."""
        try:
            return self._enter(topic)
        except Exception as exc:
            logger.debug("entering %s failed: %r; on a new connection", topic, exc)
            self._drop()
        return self._enter(topic)

    def _enter(self, topic: str) -> set[Woken]:
        """Enter `topic` on the live connection, opened if need be (lock held)."""
        self._start()
        ready = self.enter(self._conn, topic)
        if ready is not None:
            self._ready[topic] = ready
        events: set[Woken] = set()
        self._topics[topic] = events
        return events

    def _start(self) -> None:
        """Open the connection and start the dispatcher, unless running (lock held)."""
        if self._conn is not None:
            return
        conn = self.open()
        self._conn = conn
        self.generation += 1
        self._thread = threading.Thread(
            target=self._run, args=(conn, self.generation), name=self.thread_name, daemon=True
        )
        self._thread.start()

    def _leave(self, waiter: Waiter) -> None:
        with self._lock:
            if waiter.generation != self.generation or self._pid != os.getpid():
                return  # its connection is gone, and its place with it
            events = self._topics.get(waiter.topic)
            if events is None:
                return
            events.discard(waiter.woken)
            if events:
                return
            del self._topics[waiter.topic]
            self._ready.pop(waiter.topic, None)
            try:
                self.exit(self._conn, waiter.topic)
            except Exception as exc:  # the dispatcher finds the connection broken too
                logger.debug("leaving %s failed: %r", waiter.topic, exc)

    def _run(self, conn: Any, generation: int) -> None:
        """The dispatcher: the only reader of the connection, and the one that closes it."""
        try:
            self._dispatch(conn, generation)
        finally:
            with contextlib.suppress(Exception):
                self.close_connection(conn)

    def _dispatch(self, conn: Any, generation: int) -> None:
        """Read until the connection goes, idles out, or is replaced (`generation`)."""
        idle_since: float | None = None
        while True:
            with self._lock:
                if self.generation != generation or self._pid != os.getpid():
                    return
                if self._topics:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self.idle:
                    self._drop()
                    return
            try:
                for message in self.read(conn, POLL):
                    with self._lock:
                        self.received(message)
            except Exception as exc:
                with self._lock:
                    if self.generation == generation:
                        # Worth a warning while someone waits (they read again and join
                        # anew); an idle connection is just closed.
                        level = logging.WARNING if self._topics else logging.DEBUG
                        logger.log(level, "the connection for waits was lost: %r", exc)
                        self._drop()
                return

    def wake(self, topic: str, said: str | None = None) -> None:
        """Wake every waiter of `topic`, telling each what the announcement `said` (lock
        held: call it from `received`)."""
        for woken in self._topics.get(topic, ()):
            woken.said = said
            woken.set()

    def _drop(self) -> None:
        """Give up the connection (its dispatcher closes it); wake every waiter (lock held)."""
        self._conn, self._thread = None, None
        self.generation += 1
        for ready in self._ready.values():
            ready.set()
        for events in self._topics.values():
            for woken in events:
                woken.set()
        self._topics.clear()
        self._ready.clear()
        self.dropped()

    def close(self) -> None:
        """Close the connection (waiters read again; a later wait opens a new one).

        Returns once the dispatcher has closed it (at most `CLOSE_TIMEOUT` seconds).
        """
        if self._pid != os.getpid():
            self._reset()
            return
        with self._lock:
            conn, thread = self._conn, self._thread
            self._drop()
        if thread is None or thread is threading.current_thread():
            return
        with contextlib.suppress(Exception):
            self.interrupt(conn)
        thread.join(CLOSE_TIMEOUT)
        if thread.is_alive():
            logger.warning("the connection for waits did not close in %ss", CLOSE_TIMEOUT)


def wait_woken(
    read: Callable[[], SagaExecution | None],
    listener: SharedListener,
    topic: str,
    timeout: float | None,
    recheck: float,
    status: Callable[[], SagaStatus | None] | None = None,
) -> SagaExecution | None:
    """A store's `wait` on a `SharedListener`: join `topic`, then read (`read`) until the
    execution is finished, sleeping until woken or `recheck` seconds between reads (a
    safety net for a lost announcement); None once `timeout` seconds have passed.

    With `status` (the status alone, a cheaper read), a read that does not follow an
    announcement reads the status first and the whole execution only once it is
    finished; a read woken by an announcement reads the execution at once.
    """
    outcome = wait_woken_outcome(read, listener, topic, timeout, recheck, status)
    return None if outcome is None else outcome.execution  # read: never None here


def wait_woken_outcome(
    read: Callable[[], SagaExecution | None],
    listener: SharedListener,
    topic: str,
    timeout: float | None,
    recheck: float,
    status: Callable[[], SagaStatus | None] | None = None,
    told: Callable[[str], Outcome | None] | None = None,
) -> Outcome | None:
    """A store's `SagaBackend.wait_outcome` on a `SharedListener`: `wait_woken`, except
    that an announcement whose text `told` turns into an `Outcome` ends the wait without
    a read (`told` returns None for one that does not say enough)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with listener.waiting(topic, timeout) as waiter:
        woken = False
        while True:
            said = waiter.woken.said
            waiter.woken.clear()  # an announcement from now on wakes the next sleep
            outcome = told(said) if woken and told is not None and said is not None else None
            if outcome is not None:
                return outcome
            if woken or status is None or status() in TERMINAL_STATUSES:
                execution = read()
                if execution is not None and execution.status in TERMINAL_STATUSES:
                    return Outcome.of(execution)
            pause = recheck
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)
            woken = waiter.wait(pause)


#: Every listener of this process, to reset in a forked child.
_listeners: weakref.WeakSet[SharedListener] = weakref.WeakSet()


def _after_fork() -> None:
    for listener in list(_listeners):
        listener._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
