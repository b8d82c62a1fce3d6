"""Checks shared by the stores whose waits share one connection (Redis, PostgreSQL).

Each takes the store and `connections()`, the number of the store's wait connections
the server sees (counted by name: a Redis client name, a PostgreSQL application name).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from support import wait_until

from celery_saga.backends import SagaBackend
from celery_saga.backends.listening import SharedListener
from celery_saga.models import SagaExecution, SagaStatus
from celery_saga.testing import make_execution


def finish(store: SagaBackend, executions: list[SagaExecution]) -> None:
    """Move each execution to COMPLETED (which announces it)."""
    for execution in executions:
        assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})


def check_a_forked_child_waits_on_a_connection_of_its_own(
    store: SagaBackend, connections: Callable[[], int]
) -> None:
    """A child forked while the parent waits opens its own connection; the parent's
    wait, on the connection it kept, is still woken."""
    parents, childs = make_execution(), make_execution()
    for execution in (parents, childs):
        store.create(execution)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(store.wait, parents.saga_id, 60)
        wait_until(lambda: connections() == 1, 30, "the parent's wait")
        pid = os.fork()
        if pid == 0:  # the child: wait with the store object the parent shares
            code = 1
            try:
                got = store.wait(childs.saga_id, 30)
                code = 0 if got is not None and got.status is SagaStatus.COMPLETED else 2
            finally:
                os._exit(code)
        wait_until(lambda: connections() == 2, 30, "the child's own wait")
        finish(store, [childs])
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        finish(store, [parents])
        got = waiting.result(timeout=30)
    assert got is not None and got.status is SagaStatus.COMPLETED


def check_an_idle_connection_closes_and_the_next_wait_opens_one(
    store: SagaBackend, listener: SharedListener, connections: Callable[[], int]
) -> None:
    """With nobody waiting past the listener's idle time its connection closes; the next
    wait opens a new one and is woken on it."""
    listener.idle = 0.2
    done = make_execution()
    store.create(done)
    finish(store, [done])
    assert store.wait(done.saga_id, 5) is not None
    wait_until(lambda: connections() == 0, 30, "the idle connection to close")
    pending = make_execution()
    store.create(pending)
    timer = threading.Timer(0.5, finish, (store, [pending]))
    timer.start()
    try:
        got = store.wait(pending.saga_id, 30)
    finally:
        timer.join()
    assert got is not None and got.status is SagaStatus.COMPLETED


def check_a_wait_reads_the_status_alone_until_the_end_is_announced(store: SagaBackend) -> None:
    """Before the announcement a wait reads the status alone; the announcement makes it
    read the whole execution, once (what `SagaResult.get()` costs the store)."""
    execution = make_execution()
    store.create(execution)
    reads: dict[str, int] = {"get": 0, "get_status": 0}
    waiting_thread: list[threading.Thread] = []

    def counted(name: str) -> Callable[[str], object]:
        real = getattr(store, name)

        def read(saga_id: str) -> object:
            if threading.current_thread() in waiting_thread:
                reads[name] += 1
            return real(saga_id)

        return read

    store.get = counted("get")  # type: ignore[method-assign]
    store.get_status = counted("get_status")  # type: ignore[method-assign]

    def wait() -> SagaExecution | None:
        waiting_thread.append(threading.current_thread())
        return store.wait(execution.saga_id, 60)

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(wait)
            wait_until(lambda: reads["get_status"] == 1, 30, "the wait's first read")
            assert reads["get"] == 0  # running: its steps were not read
            finish(store, [execution])
            got = waiting.result(timeout=30)
    finally:
        del store.get, store.get_status  # type: ignore[method-assign]
    assert got is not None and got.status is SagaStatus.COMPLETED
    assert reads == {"get": 1, "get_status": 1}
