"""One pub/sub connection for every `wait` on a store object: `DoneListener`.

The script that makes a status finished PUBLISHes on the execution's done channel
(`Keys.done_channel`). A waiting thread joins the listener with that channel
(`celery_saga.backends.listening.SharedListener` does the sharing, the dispatcher
thread, idleness, lost connections and forks): the first waiter of a channel sends its
SUBSCRIBE (under the listener's lock) and waits for the server's confirmation; the
dispatcher, the only reader of the connection, matches confirmations to subscriptions
(first in, first out per channel) and wakes the waiters of a channel when it speaks.
The last waiter of a channel to leave unsubscribes it.

The connection subscribes to a channel of its own first (nobody publishes on it), so
it is in subscribed mode from the start to the end: redis-py then never reads from it
outside `get_message`, which only the dispatcher calls. `interrupt` shuts the socket
down (the read ends at once) instead of closing it: a read in progress holds the
socket's descriptor number (OpenSSL's, over TLS), which a close could free to the next
connection opened.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import redis

from celery_saga.backends.listening import IDLE, SharedListener
from celery_saga.backends.writes import Outcome
from celery_saga.models import SagaStatus

__all__ = ["IDLE", "DoneListener", "told"]


def told(said: str) -> Outcome | None:
    """The outcome a done channel's message says: a completion with its output, or None
    (a status alone, which the waiter reads; `Keys.done_channel`)."""
    status, _, output = said.partition(" ")
    if status != SagaStatus.COMPLETED.value or not output:
        return None
    return Outcome(SagaStatus.COMPLETED, json.loads(output))


def _connected(pubsub: Any) -> None:
    """Raise ConnectionError when `pubsub`'s connection has lost its socket.

    redis-py would reconnect it in the calling thread, whose handshake could then race
    the dispatcher's read of the same connection; the listener takes a new connection
    instead (`SharedListener.join`).
    """
    if getattr(getattr(pubsub, "connection", None), "_sock", None) is None:
        raise redis.ConnectionError("the connection for waits was lost")


class DoneListener(SharedListener):
    """Done-channel announcements for the waits of one store object, on one connection.

    `make_pubsub` makes a redis-py PubSub on the store's client; `own_channel(tag)`
    names the listener's own channel (under the store's prefix, for ACL users).
    """

    thread_name: ClassVar[str] = "celery-saga-redis-waits"

    def __init__(
        self, make_pubsub: Callable[[], Any], own_channel: Callable[[str], str], idle: float = IDLE
    ) -> None:
        self._make_pubsub = make_pubsub
        self._own_channel = own_channel
        #: channel -> confirmations awaited, in the order the SUBSCRIBEs went out.
        self._pending: dict[str, deque[threading.Event]] = {}
        super().__init__(idle)

    def _reset(self) -> None:
        super()._reset()
        self._pending = {}

    def open(self) -> Any:
        pubsub = self._make_pubsub()
        try:
            pubsub.subscribe(self._own_channel(uuid.uuid4().hex))
        except BaseException:
            with contextlib.suppress(Exception):
                pubsub.close()
            raise
        return pubsub

    def enter(self, conn: Any, topic: str) -> threading.Event:
        _connected(conn)
        confirmed = threading.Event()
        pending = self._pending.setdefault(topic, deque())
        pending.append(confirmed)
        try:
            conn.subscribe(topic)
        except BaseException:
            pending.remove(confirmed)
            raise
        return confirmed

    def exit(self, conn: Any, topic: str) -> None:
        _connected(conn)
        conn.unsubscribe(topic)

    def read(self, conn: Any, timeout: float) -> Iterator[dict[str, Any]]:
        message = conn.get_message(timeout=timeout)
        if message is not None:
            yield message

    def received(self, message: dict[str, Any]) -> None:
        """Match a SUBSCRIBE's confirmation, or wake the waiters of a channel that spoke
        (telling them what it said)."""
        kind, channel = message.get("type"), message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if kind == "message":
            data = message.get("data")
            said = data.decode() if isinstance(data, bytes) else data
            self.wake(str(channel), said if isinstance(said, str) else None)
        elif kind == "subscribe":
            pending = self._pending.get(str(channel))
            if pending:
                pending.popleft().set()
                if not pending:
                    del self._pending[str(channel)]

    def dropped(self) -> None:
        for pending in self._pending.values():
            for confirmed in pending:
                confirmed.set()
        self._pending.clear()

    def interrupt(self, conn: Any) -> None:
        """End any read on the pub/sub's socket now, keeping its descriptor (no close).

        redis-py keeps the socket in the connection's ``_sock``; without one, the
        dispatcher's read ends within a second anyway.
        """
        sock = getattr(getattr(conn, "connection", None), "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
