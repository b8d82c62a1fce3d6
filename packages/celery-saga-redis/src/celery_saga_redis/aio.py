"""Waiting from asyncio on the Redis store: redis.asyncio pub/sub, one connection per loop.

The script that makes a status terminal PUBLISHes on the execution's done channel
(`Keys.done_channel`); the synchronous `RedisSagaBackend.wait` subscribes to it on
the store object's one listener connection (listener.py). From asyncio,
`RedisNotifications` subscribes to the done channels of every execution awaited on
one event loop over a single redis.asyncio connection (part of redis-py: no extra to
install), and `wait_async` joins it:
subscribe, read, then sleep until the channel speaks. redis.asyncio is imported
when the first waiter starts a listener, so the store never imports it otherwise.

The connection copies the store client's host, port, database, credentials and
TLS options. On a Redis Cluster it goes to one node: a PUBLISH reaches every node.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from celery_saga.backends.waiting import Notifications, notifications_for, wait_notified
from celery_saga.models import SagaExecution

#: A `RedisSagaBackend` (not imported here: its backend module imports this one).
Store = Any

__all__ = ["RedisNotifications", "connection_options", "wait_async"]

#: Connection options copied from the store's client (when the async connection
#: class of this redis-py takes them): where the server is, who we are, TLS.
_COPIED = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "protocol",
        "client_name",
        "lib_name",
        "lib_version",
        "encoding",
        "encoding_errors",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
        "ssl_password",
    }
)
#: Seconds a new listener waits for the server to confirm its first subscription.
CONNECT_TIMEOUT = 10.0


def connection_options(store: Store) -> tuple[type[Any], dict[str, Any]]:
    """The redis.asyncio connection class and options that reach the store's server.

    Read from the store client's connection pool (on a cluster, from its default
    node's), so a store made from a URL and one made from a client both work.
    """
    import redis
    from redis.asyncio import connection as aconnection

    client = store.client
    if store.cluster:
        client = client.get_default_node().redis_connection
    pool = client.connection_pool
    sync_class = pool.connection_class
    if issubclass(sync_class, redis.connection.UnixDomainSocketConnection):
        async_class: Any = aconnection.UnixDomainSocketConnection
    elif issubclass(sync_class, redis.connection.SSLConnection):
        async_class = aconnection.SSLConnection
    else:
        async_class = aconnection.Connection
    accepted = _init_parameters(async_class)
    options = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name in _COPIED and name in accepted
    }
    options["decode_responses"] = True
    return async_class, options


@functools.cache
def _init_parameters(cls: Any) -> frozenset[str]:
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    return frozenset(names)


class RedisNotifications(Notifications):
    """Done-channel announcements of one Redis server, for every waiter of one loop.

    Subscribes per channel (an ACL user allowed ``<prefix>*`` channels may do so;
    a pattern subscription would need a pattern of its own in the ACL). Each
    SUBSCRIBE is confirmed by the server before its waiter reads the execution;
    commands go out in order, and confirmations of one channel come back in order,
    so they are matched first in, first out.
    """

    def __init__(self, connection_class: type[Any], options: dict[str, Any], own: str) -> None:
        super().__init__()
        self._connection_class = connection_class
        self._options = options
        #: A channel of the listener's own, subscribed at connect (no one publishes on it):
        #: the connection is then in subscribed mode from the start.
        self._own = own
        self._client: Any = None
        self._pubsub: Any = None
        self._commands = asyncio.Lock()
        self._confirmations: dict[str, deque[asyncio.Future[None]]] = {}

    def __repr__(self) -> str:
        where = self._options.get("path") or (
            f"{self._options.get('host')}:{self._options.get('port')}"
        )
        return f"<RedisNotifications {where}/{self._options.get('db', 0)}>"

    async def connect(self) -> None:
        from redis.asyncio import ConnectionPool, Redis

        pool = ConnectionPool(connection_class=self._connection_class, **self._options)
        self._client = Redis(connection_pool=pool)
        self._pubsub = self._client.pubsub()
        loop = asyncio.get_running_loop()
        confirmed = self._expect(self._own)
        await self._pubsub.subscribe(self._own)
        deadline = loop.time() + CONNECT_TIMEOUT
        while not confirmed.done():  # no reader runs yet: read the confirmation here
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{self!r}: SUBSCRIBE not confirmed in {CONNECT_TIMEOUT}s")
            message = await self._pubsub.get_message(timeout=left)
            if message is not None:
                self._handle(message)

    def _expect(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, deque()).append(future)
        return future

    async def subscribe(self, topic: str) -> None:
        async with self._commands:
            confirmed = self._expect(topic)
            try:
                await self._pubsub.subscribe(topic)
            except BaseException:
                self._confirmations[topic].remove(confirmed)
                raise
        await confirmed

    async def unsubscribe(self, topics: list[str]) -> None:
        async with self._commands:
            await self._pubsub.unsubscribe(*topics)

    async def receive(self, timeout: float) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return
            message = await self._pubsub.get_message(timeout=left)
            if message is not None:
                channel = self._handle(message)
                if channel is not None:
                    yield channel

    def _handle(self, message: dict[str, Any]) -> str | None:
        """Match a subscription's confirmation; the channel of an announcement."""
        kind, channel = message.get("type"), message.get("channel")
        if kind == "message":
            return str(channel)
        if kind == "subscribe":
            waiting = self._confirmations.get(str(channel))
            if waiting:
                future = waiting.popleft()
                if not waiting:
                    del self._confirmations[str(channel)]
                if not future.done():
                    future.set_result(None)
        return None

    async def disconnect(self) -> None:
        for waiting in self._confirmations.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(ConnectionError(f"{self!r} stopped"))
                    future.exception()  # its waiter may have left: nobody else reads it
        self._confirmations.clear()
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            await _close(pubsub)
        if client is not None:
            await _close(client)
            await client.connection_pool.disconnect()


async def _close(thing: Any) -> None:
    """``aclose()`` (redis-py 5.0.1 and later) or ``close()`` (earlier)."""
    close = getattr(thing, "aclose", None) or thing.close
    await close()


#: Per store object: how to find (or make) the running loop's listener for its server.
_listeners: weakref.WeakKeyDictionary[Store, Callable[[], Notifications]] = (
    weakref.WeakKeyDictionary()
)


def _listener(store: Store) -> Callable[[], Notifications]:
    """The running loop's listener for the store's server (made on first use).

    Stores that reach the same server with the same options share one listener per
    loop, whatever their prefix: waiters subscribe to full channel names.
    """
    found = _listeners.get(store)
    if found is None:
        connection_class, options = connection_options(store)
        key = ("redis", connection_class.__name__, repr(sorted(options.items(), key=str)))
        keys = store.keys

        def make() -> Notifications:
            own = keys.listener_channel(uuid.uuid4().hex)
            return RedisNotifications(connection_class, options, own)

        found = _listeners[store] = lambda: notifications_for(key, make)
    return found


async def wait_async(
    store: Store, saga_id: str, timeout: float | None = None
) -> SagaExecution | None:
    """`RedisSagaBackend.async_wait`: woken by the done channel, re-read every 5 s anyway."""
    return await wait_notified(
        store, saga_id, timeout, _listener(store), store.keys.done_channel(saga_id), recheck=5.0
    )
