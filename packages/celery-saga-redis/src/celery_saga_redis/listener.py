"""One pub/sub connection for every `wait` on a store object: `DoneListener`.

The script that makes a status finished PUBLISHes on the execution's done channel
(`Keys.done_channel`). A waiting thread joins the listener with that channel: the
first waiter of a channel sends its SUBSCRIBE (under the listener's lock) and waits
for the server's confirmation; a dispatcher thread, the only reader of the
connection, matches confirmations to subscriptions (first in, first out per channel)
and wakes the waiters of a channel when it speaks. The last waiter of a channel to
leave unsubscribes it; with no waiter at all for `IDLE` seconds the dispatcher closes
the connection, and the next waiter opens a new one.

The connection subscribes to a channel of its own first (nobody publishes on it), so
it is in subscribed mode from the start to the end: redis-py then never reads from it
outside `get_message`, which only the dispatcher calls. A lost connection wakes every
waiter (each re-reads its execution, then subscribes again on a new connection).

Only the dispatcher closes its connection: a read in progress holds the socket's
descriptor number (OpenSSL's, over TLS), so a close from another thread could free the
number to the next connection opened and let that read take its bytes. `close()` shuts
the socket down instead (the read ends at once), then waits for the dispatcher to go.

Fork-safe: a child process starts with no connection and no dispatcher (the parent's
are left alone) and opens its own on its first wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["IDLE", "DoneListener", "Subscription"]

logger = logging.getLogger("celery_saga.redis")

#: Seconds the connection stays open with nobody waiting.
IDLE = 10.0
#: Longest wait for the server to confirm a SUBSCRIBE (the caller then goes on reading
#: the execution every few seconds, without the announcement).
CONFIRM_TIMEOUT = 10.0
#: Seconds the dispatcher blocks in one read (it checks for idleness in between).
_POLL = 1.0
#: Longest wait in `close()` for the dispatcher to close its connection and end.
CLOSE_TIMEOUT = 5.0


class _Topic:
    """The waiters of one channel, and the confirmation of its SUBSCRIBE."""

    __slots__ = ("confirmed", "waiters")

    def __init__(self, confirmed: threading.Event) -> None:
        self.confirmed = confirmed
        self.waiters: set[threading.Event] = set()


class Subscription:
    """One waiter's membership of a channel; `woken` is set when the channel speaks."""

    def __init__(self, listener: DoneListener, channel: str) -> None:
        self.listener = listener
        self.channel = channel
        self.woken = threading.Event()
        self.generation = -1

    def wait(self, timeout: float) -> None:
        """Sleep until woken, or `timeout` seconds; back on a new connection if it was lost.

        Returns early (for the caller to read again) after subscribing anew.
        """
        if self.generation != self.listener.generation:
            self.listener.join(self, timeout)
            return
        self.woken.wait(timeout)


class DoneListener:
    """Done-channel announcements for the waits of one store object, on one connection.

    `make_pubsub` makes a redis-py PubSub on the store's client; `own_channel(tag)`
    names the listener's own channel (under the store's prefix, for ACL users).
    """

    def __init__(
        self, make_pubsub: Callable[[], Any], own_channel: Callable[[str], str], idle: float = IDLE
    ) -> None:
        self._make_pubsub = make_pubsub
        self._own_channel = own_channel
        self.idle = idle
        self._reset()
        _listeners.add(self)

    def _reset(self) -> None:
        """Forget every connection and waiter (new, closed, or in a forked child)."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._topics: dict[str, _Topic] = {}
        #: channel -> confirmations awaited, in the order the SUBSCRIBEs went out.
        self._pending: dict[str, deque[threading.Event]] = {}
        #: Bumped whenever the connection goes: a subscription of an older one is dead.
        self.generation = 0

    def __repr__(self) -> str:
        return f"<DoneListener channels={len(self._topics)} connected={self._pubsub is not None}>"

    @contextlib.contextmanager
    def subscribe(self, channel: str, timeout: float | None = None) -> Iterator[Subscription]:
        """Be a waiter of `channel` for the block, subscribed once the server confirms.

        Waits at most `timeout` seconds (and `CONFIRM_TIMEOUT`) for the confirmation.
        """
        subscription = Subscription(self, channel)
        try:
            self.join(subscription, timeout)
            yield subscription
        finally:
            self._leave(subscription)

    def join(self, subscription: Subscription, timeout: float | None) -> None:
        """Add `subscription` to its channel on the live connection (opening one if need
        be), and wait for the channel's SUBSCRIBE to be confirmed."""
        if self._pid != os.getpid():  # a fork this listener was not told about
            self._reset()
        with self._lock:
            self._start()
            topic = self._topics.get(subscription.channel)
            if topic is None:
                confirmed = threading.Event()
                topic = self._topics[subscription.channel] = _Topic(confirmed)
                self._pending.setdefault(subscription.channel, deque()).append(confirmed)
                try:
                    self._pubsub.subscribe(subscription.channel)
                except BaseException:
                    self._pending[subscription.channel].remove(confirmed)
                    del self._topics[subscription.channel]
                    raise
            topic.waiters.add(subscription.woken)
            subscription.generation = self.generation
        limit = CONFIRM_TIMEOUT if timeout is None else max(0.0, min(timeout, CONFIRM_TIMEOUT))
        topic.confirmed.wait(limit)

    def _start(self) -> None:
        """Open the connection and start the dispatcher, unless running (lock held)."""
        if self._pubsub is not None:
            return
        pubsub = self._make_pubsub()
        own = self._own_channel(uuid.uuid4().hex)
        try:
            pubsub.subscribe(own)
        except BaseException:
            with contextlib.suppress(Exception):
                pubsub.close()
            raise
        self._pubsub = pubsub
        self.generation += 1
        self._thread = threading.Thread(
            target=self._run,
            args=(pubsub, self.generation),
            name="celery-saga-redis-waits",
            daemon=True,
        )
        self._thread.start()

    def _leave(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription.generation != self.generation or self._pid != os.getpid():
                return  # its connection is gone, and its subscription with it
            topic = self._topics.get(subscription.channel)
            if topic is None:
                return
            topic.waiters.discard(subscription.woken)
            if topic.waiters:
                return
            del self._topics[subscription.channel]
            try:
                self._pubsub.unsubscribe(subscription.channel)
            except Exception as exc:  # the dispatcher finds the connection broken too
                logger.debug("unsubscribing %s failed: %r", subscription.channel, exc)

    def _run(self, pubsub: Any, generation: int) -> None:
        """The dispatcher: the only reader of the connection, and the one that closes it."""
        try:
            self._dispatch(pubsub, generation)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _dispatch(self, pubsub: Any, generation: int) -> None:
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
                message = pubsub.get_message(timeout=_POLL)
            except Exception as exc:
                with self._lock:
                    if self.generation == generation:
                        # Worth a warning while someone waits (they read again and
                        # subscribe anew); an idle connection is just closed.
                        level = logging.WARNING if self._topics else logging.DEBUG
                        logger.log(level, "the connection for waits was lost: %r", exc)
                        self._drop()
                return
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        """Match a SUBSCRIBE's confirmation, or wake the waiters of a channel that spoke."""
        kind, channel = message.get("type"), message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        with self._lock:
            if kind == "message":
                topic = self._topics.get(str(channel))
                for woken in topic.waiters if topic is not None else ():
                    woken.set()
            elif kind == "subscribe":
                pending = self._pending.get(str(channel))
                if pending:
                    pending.popleft().set()
                    if not pending:
                        del self._pending[str(channel)]

    def _drop(self) -> None:
        """Give up the connection (its dispatcher closes it); wake every waiter (lock held)."""
        self._pubsub, self._thread = None, None
        self.generation += 1
        for topic in self._topics.values():
            topic.confirmed.set()
            for woken in topic.waiters:
                woken.set()
        for pending in self._pending.values():
            for confirmed in pending:
                confirmed.set()
        self._topics.clear()
        self._pending.clear()

    def close(self) -> None:
        """Close the connection (waiters read again; a later wait opens a new one).

        Returns once the dispatcher has closed it (at most `CLOSE_TIMEOUT` seconds).
        """
        if self._pid != os.getpid():
            self._reset()
            return
        with self._lock:
            pubsub, thread = self._pubsub, self._thread
            self._drop()
        if thread is None or thread is threading.current_thread():
            return
        _shut_down(pubsub)
        thread.join(CLOSE_TIMEOUT)
        if thread.is_alive():
            logger.warning("the connection for waits did not close in %ss", CLOSE_TIMEOUT)


def _shut_down(pubsub: Any) -> None:
    """End any read on the pub/sub's socket now, keeping its descriptor (no close).

    redis-py keeps the socket in the connection's ``_sock``; without one, the
    dispatcher's read ends within `_POLL` seconds anyway.
    """
    sock = getattr(getattr(pubsub, "connection", None), "_sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


#: Every listener of this process, to reset in a forked child.
_listeners: weakref.WeakSet[DoneListener] = weakref.WeakSet()


def _after_fork() -> None:
    for listener in list(_listeners):
        listener._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
