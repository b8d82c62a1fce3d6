"""Waiting on the Redis store: one pub/sub connection for every wait of a store object.

`RedisSagaBackend.wait` (what `SagaResult.get()` calls) joins the store object's
listener instead of opening a connection of its own: counted here on the server with
CLIENT LIST, the connection carrying a client name of the test's own. The listener
survives a lost connection, closes when idle, and a forked child opens its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from support import wait_until
from waiting_checks import (
    check_a_forked_child_waits_on_a_connection_of_its_own,
    check_a_wait_reads_the_status_alone_until_the_end_is_announced,
    check_an_idle_connection_closes_and_the_next_wait_opens_one,
    finish,
)

from celery_saga.backends import Outcome
from celery_saga.models import SagaStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend
from celery_saga_redis.keys import OUTPUT_SAID

WAITERS = 50


@pytest.fixture(params=["standalone", "cluster"])
def named(request: pytest.FixtureRequest, unique: str) -> Iterator[tuple[RedisSagaBackend, str]]:
    """A store whose connections carry a client name of this test's own, and the name."""
    name = f"waits-{unique}"
    fixture = "redis_store_url" if request.param == "standalone" else "redis_cluster_store_url"
    store = RedisSagaBackend.from_url(f"{request.getfixturevalue(fixture)}&client_name={name}")
    yield store, name
    store.close()


def subscribers(store: RedisSagaBackend, name: str) -> list[dict[str, Any]]:
    """The pub/sub connections named `name`, on every node."""
    client = store.client
    listed = client.client_list(target_nodes="all") if store.cluster else client.client_list()
    if isinstance(listed, dict):  # a cluster: node -> its clients
        listed = [c for clients in listed.values() for c in clients]
    return [c for c in listed if c["name"] == name and "P" in c["flags"]]


def connection(client: dict[str, Any]) -> tuple[str, str]:
    """A connection as the server knows it: its node's side of the socket and its id.

    On a cluster each node numbers its clients on its own, so a new connection on
    another node can carry the id of one that was killed: the id alone is not enough.
    """
    return client["laddr"], client["id"]


def test_fifty_waits_from_threads_share_one_connection_and_all_return(
    named: tuple[RedisSagaBackend, str],
) -> None:
    store, name = named
    executions = [make_execution() for _ in range(WAITERS)]
    for execution in executions:
        store.create(execution)
    with ThreadPoolExecutor(max_workers=WAITERS) as pool:
        waits = [pool.submit(store.wait, e.saga_id, 60) for e in executions]
        # Every waiter subscribed (its channel, plus the listener's own), on one connection.
        wait_until(
            lambda: [int(c["sub"]) for c in subscribers(store, name)] == [WAITERS + 1],
            30,
            "all the waits to subscribe",
        )
        assert not any(w.done() for w in waits)
        finish(store, executions)
        got = [w.result(timeout=30) for w in waits]
    assert [g.saga_id if g else None for g in got] == [e.saga_id for e in executions]
    assert all(g is not None and g.status is SagaStatus.COMPLETED for g in got)
    assert len(subscribers(store, name)) == 1
    # Waiters that left unsubscribed their channels; a finished execution returns at once.
    wait_until(lambda: [int(c["sub"]) for c in subscribers(store, name)] == [1], 30, "unsubscribes")
    assert store.wait(executions[0].saga_id, 0.5) is not None


def test_a_wait_outlives_a_lost_connection(named: tuple[RedisSagaBackend, str]) -> None:
    store, name = named
    execution = make_execution()
    store.create(execution)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(store.wait, execution.saga_id, 60)
        wait_until(lambda: len(subscribers(store, name)) == 1, 30, "the wait to subscribe")
        killed = subscribers(store, name)[0]
        kill = {"target_nodes": "all"} if store.cluster else {}
        store.client.client_kill_filter(_id=killed["id"], laddr=killed["laddr"], **kill)
        # The waiter subscribes again on a new connection, then the announcement wakes it.
        wait_until(
            lambda: (
                [connection(c) for c in subscribers(store, name)] not in ([], [connection(killed)])
            ),
            30,
            "a new connection",
        )
        started = time.monotonic()
        finish(store, [execution])
        got = waiting.result(timeout=30)
    assert got is not None and got.status is SagaStatus.COMPLETED
    assert time.monotonic() - started < 4  # woken by the announcement, not the 5 s re-read


def test_a_wait_takes_a_new_connection_when_the_shared_one_lost_its_socket_unseen(
    named: tuple[RedisSagaBackend, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter that finds the shared connection without its socket, before the dispatcher
    has seen the loss, does not reconnect it (its handshake would race the dispatcher's
    read: seen as a read timeout in a TLS store's wait): the listener drops it and
    subscribes the waiter on a new connection, where the announcement wakes it."""
    store, name = named
    listener = store._listener
    idle = make_execution()
    store.create(idle)
    assert store.wait(idle.saga_id, 0.01) is None  # the listener's connection is open
    first, generation = listener._conn, listener.generation
    stuck, release = threading.Event(), threading.Event()
    real_read = listener.read

    def read(conn: Any, timeout: float) -> Iterator[dict[str, Any]]:
        if conn is first:  # a read that has not seen the loss yet
            stuck.set()
            release.wait(30)
            raise redis.ConnectionError("lost")
        return real_read(conn, timeout)

    peeked = threading.Event()
    real_get_status = store.get_status

    def get_status(saga_id: str) -> Any:
        status = real_get_status(saga_id)
        peeked.set()  # the waiter's first read, once it is subscribed, has returned
        return status

    monkeypatch.setattr(listener, "read", read)
    monkeypatch.setattr(store, "get_status", get_status)
    wait_until(stuck.is_set, 30, "the dispatcher to enter its next read")
    first.connection.disconnect()
    execution = make_execution()
    store.create(execution)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(store.wait_outcome, execution.saga_id, 60)
            wait_until(peeked.is_set, 30, "the wait to subscribe and read")
            assert listener._conn is not first and len(subscribers(store, name)) == 1
            assert store.update_saga(
                execution.saga_id, {"status": SagaStatus.COMPLETED, "output": {"n": 1}}
            )
            outcome = waiting.result(timeout=30)
    finally:
        release.set()
    assert outcome is not None and outcome.status is SagaStatus.COMPLETED
    assert outcome.output == {"n": 1}
    assert listener.generation > generation
    if not store.cluster:  # a cluster's announcement says the status alone: then a read
        assert outcome.execution is None  # told by the announcement, on the new connection


def test_an_idle_connection_closes_and_the_next_wait_opens_one(
    named: tuple[RedisSagaBackend, str],
) -> None:
    store, name = named
    check_an_idle_connection_closes_and_the_next_wait_opens_one(
        store, store._listener, lambda: len(subscribers(store, name))
    )


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_waits_on_a_connection_of_its_own(redis_store_url: str, unique: str) -> None:
    name = f"fork-{unique}"
    store = RedisSagaBackend.from_url(f"{redis_store_url}&client_name={name}")
    try:
        check_a_forked_child_waits_on_a_connection_of_its_own(
            store, lambda: len(subscribers(store, name))
        )
    finally:
        store.close()


def test_a_wait_reads_the_status_alone_until_the_end_is_announced(
    named: tuple[RedisSagaBackend, str],
) -> None:
    check_a_wait_reads_the_status_alone_until_the_end_is_announced(named[0])


@pytest.mark.parametrize(
    ("status", "output", "said"),
    [
        (SagaStatus.COMPLETED, {"order": 7, "note": "é"}, True),
        (SagaStatus.COMPLETED, {"blob": "x" * OUTPUT_SAID}, False),  # too long to say
        (SagaStatus.COMPENSATED, None, False),  # get() raises with the steps: read
    ],
)
def test_a_completion_tells_its_waiter_the_output_without_a_read(
    named: tuple[RedisSagaBackend, str], status: SagaStatus, output: Any, said: bool
) -> None:
    """`wait_outcome` (what `SagaResult.get()` calls) takes a completion's output from its
    announcement; a long output, another end, or a cluster's announcement (the status
    alone) makes it read the execution."""
    store, _ = named
    execution = make_execution()
    store.create(execution)
    waiting_thread: list[threading.Thread] = []
    reads = peeks = 0
    real_get, real_get_status = store.get, store.get_status

    def get(saga_id: str) -> Any:
        nonlocal reads
        if threading.current_thread() in waiting_thread:
            reads += 1
        return real_get(saga_id)

    def get_status(saga_id: str) -> Any:
        nonlocal peeks
        status = real_get_status(saga_id)
        if threading.current_thread() in waiting_thread:
            peeks += 1  # counted once the read has returned: the saga ends after it
        return status

    def wait() -> Outcome | None:
        waiting_thread.append(threading.current_thread())
        return store.wait_outcome(execution.saga_id, 60)

    store.get, store.get_status = get, get_status  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(wait)
            # Its first read (of the status) comes once the subscription is confirmed.
            wait_until(lambda: peeks == 1, 30, "the wait to subscribe and read")
            changes = {"status": status, "output": output} if output else {"status": status}
            assert store.update_saga(execution.saga_id, changes)
            outcome = waiting.result(timeout=30)
    finally:
        del store.get, store.get_status  # type: ignore[method-assign]
    assert outcome is not None and outcome.status is status
    told = said and not store.cluster
    assert reads == (0 if told else 1)
    assert (outcome.execution is None) is told
    if status is SagaStatus.COMPLETED:
        assert outcome.output == output
