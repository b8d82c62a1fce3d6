"""The heartbeat: one store call per beat for every lease a process holds."""

from __future__ import annotations

import os
import time

import pytest
from support import wait_until

from celery_saga.backends import Lease, MemorySagaBackend
from celery_saga.models import StepStatus
from celery_saga.runtime import leases
from celery_saga.testing import make_execution


def running(store: MemorySagaBackend, owner: str | None = None) -> str:
    execution = make_execution()
    store.create(execution)
    changes: dict[str, object] = {"status": StepStatus.RUNNING, "attempt": 1}
    if owner is not None:
        changes.update(lease_owner=owner, lease_expires_at=time.time() + 30)
    store.update_step(execution.saga_id, 0, changes)
    return execution.saga_id


def test_one_beat_renews_every_held_lease_in_one_call_and_drops_the_lost() -> None:
    store = MemorySagaBackend()
    beat = leases.Heartbeat()
    held = [Lease(running(store), 0, f"me-{i}", 1) for i in range(5)]
    stolen = Lease(running(store, owner="someone-else"), 0, "me", 1)
    for lease in [*held, stolen]:
        beat.hold(store, lease, 60.0)
    store.stats.reset()
    beat.beat()
    assert store.stats.round_trips == 1
    assert set(beat.held()) == set(held), "the lease another owner holds is dropped"
    for lease in held:
        step = store.get(lease.saga_id).step(0)  # type: ignore[union-attr]
        assert step.lease_owner == lease.owner
        assert step.lease_expires_at is not None and step.lease_expires_at > time.time() + 50
    beat.release(held[0])
    assert held[0] not in beat.held()


def test_the_thread_renews_on_its_own_every_third_of_the_lease() -> None:
    store = MemorySagaBackend()
    lease = Lease(running(store), 0, "me", 1)

    def expiry() -> float:
        step = store.get(lease.saga_id).step(0)  # type: ignore[union-attr]
        return step.lease_expires_at or 0.0

    with leases.holding(store, lease, 0.3):  # unowned: the first beat claims it
        first = wait_until(expiry, 5, "the first beat to claim the lease")
        wait_until(lambda: expiry() > first, 5, "a later beat to renew it")
    assert lease not in leases.heartbeat().held()


def test_each_process_has_its_own_heartbeat() -> None:
    first = leases.heartbeat()
    assert leases.heartbeat() is first
    first._pid = os.getpid() + 1  # what a forked child sees: the parent's object
    assert leases.heartbeat() is not first


def test_owner_names_host_process_thread_and_task() -> None:
    owner = leases.owner_of("task-1")
    host, pid, thread, task = owner.split("/")
    assert (pid, task) == (str(os.getpid()), "task-1") and host and thread


@pytest.mark.parametrize(
    ("now", "last", "interval", "sleep"),
    [
        (10.0, 10.0, 0.1, 0.1),  # just beat: a whole interval
        (10.0, 9.5, 1.7, 1.0),  # due in 1.2 s: wakes after a second to look again
        (10.0, 9.0, 1.7, 0.7),  # due in 0.7 s: sleeps exactly that, not a whole second
        (10.0, 8.3, 1.7, 0.0),  # due now
        (10.0, 5.0, 1.7, 0.0),  # overdue (a slow store call): at once, never negative
        (10.0, 10.0, 10.0, 1.0),  # a 30 s lease: still wakes every second
    ],
)
def test_the_heartbeat_sleeps_until_the_next_beat_is_due(
    now: float, last: float, interval: float, sleep: float
) -> None:
    assert leases.until_next_beat(now, last, interval) == pytest.approx(sleep)
