"""Network faults between workers and their servers, injected by a TCP proxy.

`tests/faults.py` puts a proxy between the worker processes and the state store, or
the broker, and cuts, black-holes or heals it while sagas run. Whatever happens,
nothing is lost: after the fault heals and recovery runs, every saga is terminal and
every step's effect is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from e2e_support import ProcessSetup, WorkerProcess, wait_for
from faults import FaultProxy
from support import LONG_PROCESS_TESTS
from worker_app import make_app

from celery_saga import SagaStatus, recover
from celery_saga.config import backend_for

pytestmark = [pytest.mark.processes, pytest.mark.slow, LONG_PROCESS_TESTS]

CONF: dict[str, Any] = {
    "saga_lease_seconds": 3.0,
    "saga_recovery_stalled_after": 2.0,
    "worker_prefetch_multiplier": 1,
}


def through(proxy: FaultProxy, url: str) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


@contextmanager
def recovery_every(app: Any, seconds: float) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):  # a beat schedule: one pass per period
            try:
                recover(app)
            except Exception as exc:  # a pass may meet the fault too; the next one retries
                print(f"recovery pass failed: {exc!r}")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


def progressed(results: list[Any], steps: int) -> bool:
    """Some sagas have steps done and some have steps left: a fault now hits the middle."""
    done = [sum(s.status.value == "success" for s in r.execution.steps) for r in results]
    return any(d > 0 for d in done) and any(d < steps for d in done)


def settle(app: Any, results: list[Any], timeout: float) -> None:
    with recovery_every(app, 0.5):
        try:
            wait_for(
                lambda: all(r.status is SagaStatus.COMPLETED for r in results),
                timeout,
                "every saga to complete after the fault",
            )
        except pytest.fail.Exception as exc:  # say which sagas, and where each stands
            stuck = [_where(r) for r in results if r.status is not SagaStatus.COMPLETED]
            pytest.fail(f"{exc}; not completed: {stuck}")


def _where(result: Any) -> str:
    """A saga's status and each step's status, attempt, lease, re-sends and error."""
    execution = result.execution
    steps = ", ".join(
        f"{s.index}:{s.status.value}/a{s.attempt}/lease={s.lease_owner}/sends={s.sends}"
        + (f"/error={s.error!r}" if s.error else "")
        for s in execution.steps
    )
    return f"{execution.saga_id} {execution.status.value} [{steps}]"


def check_effects(scenarios: Any, results: list[Any]) -> None:
    effects = scenarios.journal.effects("effects")
    for result in results:
        assert {f"{result.saga_id}:{n}" for n in range(5)} <= effects
    assert scenarios.journal.effects("undone") == set(), "nothing was compensated"


def survive(
    processes: ProcessSetup,
    worker_processes: Callable[..., WorkerProcess],
    *,
    through_proxy: str,
    fault: Callable[[FaultProxy], None],
    seconds: float,
    settle_within: float,
) -> None:
    """20 sagas of 5 steps; half way, `fault` hits the proxy to the broker or the store
    (`through_proxy`) for `seconds`; after it heals and recovery runs, all complete and
    every step's effect is recorded."""
    url = processes.broker if through_proxy == "broker" else processes.store
    port = urlsplit(url).port
    assert port is not None
    with FaultProxy(port) as proxy:
        routed = {f"SAGA_E2E_{through_proxy.upper()}": through(proxy, url)}
        env = processes.env(SAGA_E2E_CONF=json.dumps(CONF), **routed)
        worker_processes("worker_app", [processes.queue], 4, env)
        app, (scenarios, _) = processes.app(conf=CONF)
        results = [scenarios.crash.run(n=i) for i in range(20)]
        wait_for(lambda: progressed(results, 5), 30, "sagas half way")
        fault(proxy)
        time.sleep(seconds)  # the outage itself
        proxy.heal()
        settle(app, results, timeout=settle_within)
    check_effects(scenarios, results)


def test_store_black_holed_for_10s_during_bookkeeping_loses_nothing(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    """On a Redis Cluster the proxy fronts the seed node only: a client that has read the
    slot map talks to the nodes directly, so there the fault meets the worker processes
    that open the store during it (as it certainly does in
    `test_store_black_holed_before_the_workers_open_it_loses_nothing`)."""
    if processes.store.startswith("sqlite"):
        pytest.skip("workers reach a SQLite store as a file, not over the network")
    survive(
        processes,
        worker_processes,
        through_proxy="store",
        fault=FaultProxy.black_hole,  # the store answers nothing
        seconds=10,
        settle_within=120,
    )


def test_broker_cut_during_stage_hand_on_loses_nothing(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    survive(
        processes,
        worker_processes,
        through_proxy="broker",
        fault=FaultProxy.cut,  # no connection to the broker
        seconds=3,
        settle_within=180,
    )


def test_broker_down_at_run_then_the_same_key_completes_one_execution(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    port = urlsplit(processes.broker).port
    assert port is not None
    env = processes.env(SAGA_E2E_CONF=json.dumps(CONF))
    worker_processes("worker_app", [processes.queue], 2, env)
    with FaultProxy(port) as proxy:
        conf = {
            **CONF,
            "broker_connection_timeout": 2,
            "broker_connection_max_retries": 1,
            "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0},
        }
        app, (scenarios, _) = make_app(
            broker=through(proxy, processes.broker),
            store=processes.store,
            journal=processes.journal,
            queue=processes.queue,
            prefix=processes.journal_prefix,
            conf=conf,
        )
        proxy.cut()
        key = f"order-{processes.queue}"
        with pytest.raises(Exception) as raised:
            scenarios.crash.run(n=1, idempotency_key=key)
        assert not isinstance(raised.value, AssertionError)
        stored = scenarios.crash.result(_by_key(app, scenarios.crash, key)).execution
        assert stored is not None and stored.status is SagaStatus.PENDING, stored
        proxy.heal()
        result = scenarios.crash.run(n=1, idempotency_key=key)
        assert result.saga_id == stored.saga_id
        assert result.get(timeout=60) is not None
    assert result.status is SagaStatus.COMPLETED
    listed = result.backend.list(name=scenarios.crash.name).items
    assert [s.saga_id for s in listed if s.idempotency_key == key] == [result.saga_id]


def _by_key(app: Any, saga: Any, key: str) -> str:
    """The id of the execution created with idempotency key `key`."""
    execution = backend_for(app, saga.backend).find_by_idempotency_key(key)
    assert execution is not None, "run() left no record behind"
    return execution.saga_id


def test_store_black_holed_before_the_workers_open_it_loses_nothing(
    processes: ProcessSetup, worker_processes: Callable[..., WorkerProcess]
) -> None:
    """A worker process opens the store on its first saga message; while the store answers
    nothing, that attempt is put off, never recorded as the step's failure. (On a Redis
    Cluster the proxy fronts only the seed node: opening the store is what it stops.)"""
    if processes.store.startswith("sqlite"):
        pytest.skip("workers reach a SQLite store as a file, not over the network")
    port = urlsplit(processes.store).port
    assert port is not None
    with FaultProxy(port) as proxy:
        env = processes.env(
            SAGA_E2E_CONF=json.dumps(CONF), SAGA_E2E_STORE=through(proxy, processes.store)
        )
        worker_processes("worker_app", [processes.queue], 4, env)
        app, (scenarios, _) = processes.app(conf=CONF)
        proxy.black_hole()  # before any worker process has opened the store
        results = [scenarios.crash.run(n=i) for i in range(20)]
        time.sleep(10)  # the outage itself: the first saga messages meet it
        proxy.heal()
        settle(app, results, timeout=120)
    check_effects(scenarios, results)
