"""Waiting for an execution to finish from asyncio, without blocking the event loop.

Stores are synchronous, so every store call made from a coroutine here runs in a
worker thread (`celery_saga.offload.run_blocking`: a few at a time per loop); the
loop itself only sleeps and dispatches.
Two ways to wait, chosen by the store in `SagaBackend.async_wait`:

- `poll_terminal`: read the execution at a bounded, growing interval (every store
  can; the default `async_wait`). The memory, SQLite, MySQL and MongoDB stores use it.
- `Notifications` with `wait_notified`: one listener per event loop and server that
  wakes the waiters of many executions (Redis pub/sub, PostgreSQL LISTEN). A thousand
  awaited sagas then cost one connection and two reads each, with no polling. A store
  subclasses `Notifications` for its server and calls `wait_notified` from its
  `async_wait`; the async driver is imported there, so core needs none.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterable
from typing import Any, ClassVar, Protocol

from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus
from celery_saga.offload import run_blocking


class Readable(Protocol):
    """What waiting needs of a store (a `SagaBackend`; not imported: it imports this)."""

    @property
    def poll_interval(self) -> float: ...

    def get(self, saga_id: str) -> SagaExecution | None: ...

    def get_status(self, saga_id: str) -> SagaStatus | None: ...


__all__ = [
    "Notifications",
    "NotificationsClosed",
    "Subscription",
    "live_notifications",
    "notifications_for",
    "poll_terminal",
    "read_finished",
    "wait_notified",
]

logger = logging.getLogger("celery_saga.waiting")

#: Longest pause between two reads of `poll_terminal` (seconds).
MAX_POLL_INTERVAL = 0.5


def _finished(execution: SagaExecution | None) -> bool:
    return execution is not None and execution.status in TERMINAL_STATUSES


def read_finished(store: Readable, saga_id: str) -> SagaExecution | None:
    """The whole execution once it is finished; None (after reading its status alone)
    while it is not, or when there is none.

    A wait's reads of an unfinished execution then cost one field each, not every
    step: the execution is read in full once, at the end.
    """
    if store.get_status(saga_id) not in TERMINAL_STATUSES:
        return None
    execution = store.get(saga_id)
    return execution if _finished(execution) else None


async def poll_terminal(
    store: Readable, saga_id: str, timeout: float | None = None
) -> SagaExecution | None:
    """Read the execution until it is terminal; None once `timeout` seconds have passed.

    Each read before the end is of the status alone (`read_finished`). The first
    pause is the store's `poll_interval`, growing by half each time up to half a
    second: what the synchronous `SagaBackend.wait` does, but each read runs
    in a thread and the pauses are `asyncio.sleep`, so the loop is never held.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delay = store.poll_interval
    while True:
        execution = await run_blocking(read_finished, store, saga_id)
        if execution is not None:
            return execution
        if deadline is None:
            await asyncio.sleep(delay)
        else:
            left = deadline - loop.time()
            if left <= 0:
                return None
            await asyncio.sleep(min(delay, left))
        delay = min(delay * 1.5, MAX_POLL_INTERVAL)


class NotificationsClosed(RuntimeError):
    """The listener stopped (its connection failed, or it closed when idle)."""


class _Topic:
    """The waiters of one topic, and the subscription they share."""

    __slots__ = ("events", "ready")

    def __init__(self, ready: asyncio.Task[None]) -> None:
        self.ready = ready
        self.events: set[asyncio.Event] = set()


class Subscription:
    """One waiter's place on a listener: `woken` is set when its topic is announced.

    Clear `woken` before reading the execution and wait on it afterwards, so an
    announcement that arrives in between is never lost. `leave()` when done.
    """

    def __init__(self, notifications: Notifications, topic: str, woken: asyncio.Event) -> None:
        self.notifications = notifications
        self.topic = topic
        self.woken = woken

    @property
    def alive(self) -> bool:
        """False once the listener stopped: nothing will wake this waiter any more."""
        return self.notifications.alive

    def leave(self) -> None:
        """Stop waiting (the listener unsubscribes idle topics on its next tick)."""
        self.notifications._leave(self.topic, self.woken)


class Notifications(abc.ABC):
    """A listener shared by every waiter of one event loop on one notification source.

    The first waiter starts it: `connect` runs in a task of its own, which then
    reads announcements with `receive` and wakes the waiters of each announced
    topic (a Redis channel, a PostgreSQL notification's saga id). Topics nobody
    waits on any more are unsubscribed on the next tick; after `linger` seconds with
    no topic the listener disconnects, and the next waiter starts a new one. If the
    connection fails, every waiter is woken and sees `alive` false.

    Subclasses implement the transport: `connect`, `receive`, `disconnect`, and, for
    a server that subscribes per topic, `subscribe` and `unsubscribe`.
    """

    #: Seconds the listener stays connected with nobody waiting before it disconnects.
    linger: ClassVar[float] = 10.0
    #: Longest single `receive` (seconds): how often idle topics are unsubscribed.
    tick: ClassVar[float] = 1.0

    def __init__(self) -> None:
        #: False once the listener stopped or is stopping: no new waiter may join.
        self.alive = True
        self._topics: dict[str, _Topic] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[None] | None = None
        self._forget: Callable[[], None] | None = None

    # -- the transport ---------------------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; return once the server listens (or raise)."""

    async def subscribe(self, topic: str) -> None:
        """Start receiving `topic`; return once the server confirmed it.

        The default does nothing: for a source that delivers every topic once
        connected (a PostgreSQL LISTEN on the store's one channel).
        """

    async def unsubscribe(self, topics: list[str]) -> None:
        """Stop receiving `topics` (nobody waits on them any more)."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> AsyncIterator[str]:
        """Yield announced topics as they arrive, for at most `timeout` seconds."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the connection (errors are logged and ignored by the caller)."""

    # -- waiters ---------------------------------------------------------------------------
    async def join(self, topic: str) -> Subscription:
        """Wait on `topic`: returns once announcements of it will reach the waiter.

        Raises `NotificationsClosed` if the listener stopped, or what `connect` or
        `subscribe` raised.
        """
        self._check_alive()
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._connected = loop.create_future()
            self._connected.add_done_callback(_retrieve)
            self._task = loop.create_task(self._run(), name=f"{type(self).__name__} listener")
        assert self._connected is not None
        await asyncio.shield(self._connected)
        self._check_alive()
        entry = self._topics.get(topic)
        if entry is None:
            ready = loop.create_task(self.subscribe(topic))
            ready.add_done_callback(_retrieve)
            entry = self._topics[topic] = _Topic(ready)
        woken = asyncio.Event()
        entry.events.add(woken)
        try:
            await asyncio.shield(entry.ready)
            self._check_alive()
        except BaseException:
            entry.events.discard(woken)
            raise
        return Subscription(self, topic, woken)

    def _check_alive(self) -> None:
        if not self.alive:
            raise NotificationsClosed(f"{self!r} has stopped")

    def _leave(self, topic: str, woken: asyncio.Event) -> None:
        entry = self._topics.get(topic)
        if entry is not None:
            entry.events.discard(woken)

    @property
    def waiting(self) -> int:
        """How many waiters are joined, over all topics."""
        return sum(len(entry.events) for entry in self._topics.values())

    def _wake(self, topic: str) -> None:
        entry = self._topics.get(topic)
        if entry is not None:
            for event in entry.events:
                event.set()

    # -- the listener task -----------------------------------------------------------------
    async def _run(self) -> None:
        assert self._connected is not None
        loop = asyncio.get_running_loop()
        try:
            await _guarded(self.connect())
        except asyncio.CancelledError:
            self._stop()
            self._connected.cancel()
            await self._disconnect()
            raise
        except Exception as exc:
            self._stop()
            self._connected.set_exception(exc)
            await self._disconnect()
            return
        self._connected.set_result(None)
        idle_since = loop.time()
        try:
            while True:
                await _guarded(self._tick())
                idle = [t for t, entry in self._topics.items() if not entry.events]
                idle = [t for t in idle if self._topics[t].ready.done()]
                for topic in idle:
                    del self._topics[topic]
                if not self._topics:
                    if loop.time() - idle_since >= self.linger:
                        self._stop()  # before any await: nobody joins from here on
                else:
                    idle_since = loop.time()
                if idle:
                    await self.unsubscribe(idle)
                if not self.alive:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "%r stopped (%r); its waiters read the store until they finish", self, exc
            )
        finally:
            self._stop()
            await self._disconnect()

    async def _tick(self) -> None:
        """Wake the waiters of every topic announced within one `tick`."""
        async for topic in self.receive(self.tick):
            self._wake(topic)

    def _stop(self) -> None:
        """Refuse new waiters, forget this listener, and wake everyone still waiting."""
        self.alive = False
        if self._forget is not None:
            self._forget()
            self._forget = None
        for entry in self._topics.values():
            for event in entry.events:
                event.set()

    async def _disconnect(self) -> None:
        try:
            await self.disconnect()
        except Exception as exc:  # the connection is going away anyway
            logger.debug("%r: error while disconnecting: %r", self, exc)

    async def aclose(self) -> None:
        """Stop the listener now (tests and shutdown hooks; it also stops when idle)."""
        self._stop()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


async def _guarded(work: Coroutine[Any, Any, None]) -> None:
    """Await `work` in a task of its own, so that cancelling the caller always works.

    A driver's read that swallows a cancellation (one that arrives just as the read's
    own timeout fires) would otherwise keep the listener running, and `asyncio.run`
    waiting for it; here the caller is cancelled at once and `work` is cancelled too
    (it ends by itself soon after, once its connection is closed).
    """
    task = asyncio.get_running_loop().create_task(work)
    task.add_done_callback(_retrieve)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        raise
    task.result()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (its waiters may all have left, or it was
    replaced: nobody else would read it)."""
    if not future.cancelled():
        future.exception()


#: Live listeners, per event loop and source key.
_listeners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Notifications]]
_listeners = weakref.WeakKeyDictionary()
_listeners_lock = threading.Lock()


def notifications_for(key: Hashable, factory: Callable[[], Notifications]) -> Notifications:
    """The running loop's live listener for `key`, made by `factory` if there is none.

    `key` identifies the notification source (server, credentials and channel), so
    every store object that talks to the same source shares one listener per loop.
    """
    loop = asyncio.get_running_loop()
    with _listeners_lock:
        by_key = _listeners.setdefault(loop, {})
        found = by_key.get(key)
        if found is not None and found.alive:
            return found
        made = by_key[key] = factory()

    def forget() -> None:
        with _listeners_lock:
            if _listeners.get(loop, {}).get(key) is made:
                del _listeners[loop][key]

    made._forget = forget
    return made


def live_notifications() -> Iterable[Notifications]:
    """The running loop's live listeners (for tests and shutdown hooks)."""
    loop = asyncio.get_running_loop()
    with _listeners_lock:
        return list(_listeners.get(loop, {}).values())


async def wait_notified(
    store: Readable,
    saga_id: str,
    timeout: float | None,
    notifications: Callable[[], Notifications],
    topic: str,
    *,
    recheck: float = 5.0,
    join_timeout: float = 10.0,
) -> SagaExecution | None:
    """Wait for the execution to be terminal, woken by `notifications`; None on timeout.

    Joins the listener for `topic` first and reads the execution afterwards, so an
    announcement made after that read always wakes the waiter; then reads again on
    each announcement, and every `recheck` seconds anyway (an announcement lost with
    a dropped connection). If the listener cannot be joined within `join_timeout`
    seconds, or stops while waiting, the rest of the wait polls (`poll_terminal`).
    A read that follows an announcement reads the execution; any other reads its
    status first (`read_finished`).
    """
    if timeout is not None and timeout <= 0:
        return await poll_terminal(store, saga_id, 0)  # one read, nothing to wait for
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout

    def left() -> float | None:
        return None if deadline is None else max(deadline - loop.time(), 0.0)

    listener = notifications()
    limit = join_timeout if timeout is None else min(join_timeout, timeout)
    try:
        subscription = await asyncio.wait_for(listener.join(topic), limit)
    except asyncio.TimeoutError:
        logger.info("%r: not listening after %ss; polling instead", listener, limit)
        return await poll_terminal(store, saga_id, left())
    except Exception as exc:
        logger.warning("%r: cannot wait by notification (%r); polling instead", listener, exc)
        return await poll_terminal(store, saga_id, left())
    try:
        woken = False
        while True:
            subscription.woken.clear()
            if woken:  # announced: the execution at once
                execution = await run_blocking(store.get, saga_id)
                execution = execution if _finished(execution) else None
            else:  # the status first, the execution once it is finished
                execution = await run_blocking(read_finished, store, saga_id)
            if execution is not None:
                return execution
            remaining = left()
            if remaining is not None and remaining <= 0:
                return None
            if not subscription.alive:
                return await poll_terminal(store, saga_id, remaining)
            pause = recheck if remaining is None else min(recheck, remaining)
            try:
                await asyncio.wait_for(subscription.woken.wait(), pause)
                woken = True
            except asyncio.TimeoutError:
                woken = False
    finally:
        subscription.leave()
