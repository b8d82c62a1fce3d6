"""The conformance suite, leases: lease conditions, renewal, takeover, late successes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from celery_saga.backends.base import Lease, SagaBackend, StepExpect
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution, race

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


class LeaseTests(SuiteBase):
    """The conformance suite, leases (a part of `BackendConformance`)."""

    # -- leases and late outcomes ---------------------------------------------------------
    def _running(self, backend: SagaBackend, *, owner: str | None, expires: float | None) -> str:
        """A stored execution whose step 0 runs attempt 1 under `owner`'s lease."""
        execution = make_execution()
        backend.create(execution)
        changes: dict[str, Any] = {"status": StepStatus.RUNNING, "attempt": 1, "sent_at": 1.0}
        if owner is not None:
            changes.update(lease_owner=owner, lease_expires_at=expires)
        assert backend.update_step(execution.saga_id, 0, changes).applied
        return execution.saga_id

    def test_lease_conditions_refuse_a_live_lease_and_pass_a_free_or_own_one(
        self, backend: SagaBackend
    ) -> None:
        """`lease_free_at`/`lease_holder`/`lease_owners` agree with `StepExpect.refusal`."""
        t = time.time()
        sid = self._running(backend, owner="host/1/task-a", expires=t + 30)
        refused = backend.update_step(
            sid, 0, {"error": "no"}, expect=StepExpect(lease_free_at=t, lease_holder="host/2/b")
        )
        assert not refused.applied
        assert (refused.lease_owner, refused.lease_expires_at) == ("host/1/task-a", t + 30)
        assert not backend.update_step(
            sid, 0, {"error": "no"}, expect=StepExpect(lease_owners=("host/2/b", None))
        ).applied
        for expect in (
            StepExpect(lease_free_at=t, lease_holder="host/1/task-a"),  # its own lease
            StepExpect(lease_free_at=t + 31),  # expired by then
            StepExpect(lease_owners=("host/1/task-a",)),
        ):
            assert backend.update_step(sid, 0, {"error": "yes"}, expect=expect).applied, expect
        unowned = self._running(backend, owner=None, expires=None)
        assert backend.update_step(
            unowned, 0, {"error": "yes"}, expect=StepExpect(lease_free_at=t)
        ).applied
        assert backend.update_step(
            unowned, 0, {"error": "yes"}, expect=StepExpect(lease_owners=("x", None))
        ).applied
        got = backend.get(sid)
        assert got is not None and got.step(0).error == "yes"

    def test_renew_leases_extends_held_claims_unowned_and_reports_lost(
        self, backend: SagaBackend
    ) -> None:
        """One call renews what is still held, claims unowned attempts, reports the rest."""
        t = time.time()
        mine = self._running(backend, owner="me", expires=t + 5)
        unowned = self._running(backend, owner=None, expires=None)
        theirs = self._running(backend, owner="other", expires=t + 30)
        moved = self._running(backend, owner="me", expires=t + 5)
        backend.update_step(moved, 0, {"status": StepStatus.SUCCESS})
        comp = self._running(backend, owner=None, expires=None)
        backend.update_step(comp, 0, {"status": StepStatus.COMPENSATING, "comp_attempt": 1})
        leases = [
            Lease(mine, 0, "me", 1),
            Lease(unowned, 0, "me", 1),
            Lease(theirs, 0, "me", 1),
            Lease(moved, 0, "me", 1),
            Lease(comp, 0, "me", 1, compensation=True),
            Lease(unowned, 1, "me", 1),  # step 1 is not running
            Lease(str(uuid.uuid4()), 0, "me", 1),  # no such execution
        ]
        lost = backend.renew_leases(leases, t + 60)
        assert sorted(lost, key=repr) == sorted(leases[2:4] + leases[5:], key=repr)
        for sid in (mine, unowned, comp):
            got = backend.get(sid)
            assert got is not None
            assert (got.step(0).lease_owner, got.step(0).lease_expires_at) == ("me", t + 60)
        for sid, owner in ((theirs, "other"), (moved, "me")):
            got = backend.get(sid)
            assert got is not None and got.step(0).lease_owner == owner
            assert got.step(0).lease_expires_at != t + 60
        assert backend.renew_leases([], t) == []

    def test_renew_leases_costs_one_round_trip_for_many(self, backend: SagaBackend) -> None:
        """A heartbeat renews every lease of its process in one store call."""
        if not self.requirements.renews_leases_in_one_round_trip:
            pytest.skip("this store declares it renews leases one by one")
        t = time.time()
        leases = [Lease(self._running(backend, owner=None, expires=None), 0, "me", 1)]
        leases += [Lease(self._running(backend, owner="me", expires=t), 0, "me", 1)] * 2
        leases += [Lease(self._running(backend, owner="me", expires=t), 0, "me", 1)]
        backend.stats.reset()
        assert backend.renew_leases(leases, t + 60) == []
        assert backend.stats.round_trips == 1

    def test_take_over_only_once_the_lease_is_free(self, backend: SagaBackend) -> None:
        """A live lease refuses a takeover; an expired one lets exactly the first through."""
        t = time.time()
        sid = self._running(backend, owner="host/1/a", expires=t + 30)
        change = {"attempt": 2, "lease_owner": None, "lease_expires_at": None, "sent_at": t}
        refused = backend.take_over(sid, 0, change, attempt=1, now=t)
        assert not refused.applied and refused.lease_owner == "host/1/a"
        taken = backend.take_over(sid, 0, change, attempt=1, now=t + 31)
        assert taken.applied and taken.attempt == 2
        assert not backend.take_over(
            sid, 0, {**change, "attempt": 3}, attempt=1, now=t + 31
        ).applied
        got = backend.get(sid)
        assert got is not None
        assert (got.step(0).attempt, got.step(0).lease_owner, got.step(0).sent_at) == (2, None, t)
        # The superseded owner's renewal is lost and changes nothing.
        assert backend.renew_leases([Lease(sid, 0, "host/1/a", 1)], t + 90) != []
        got = backend.get(sid)
        assert got is not None and got.step(0).lease_owner is None

    def test_take_over_a_compensation_checks_its_own_attempt(self, backend: SagaBackend) -> None:
        """A compensation is taken over by its compensation attempt and lease, never as a forward
        attempt."""
        t = time.time()
        sid = self._running(backend, owner=None, expires=None)
        backend.update_step(
            sid,
            0,
            {
                "status": StepStatus.COMPENSATING,
                "comp_attempt": 2,
                "lease_owner": "host/1/c",
                "lease_expires_at": t + 30,
            },
        )
        change = {"comp_attempt": 3, "lease_owner": None, "lease_expires_at": None}
        assert not backend.take_over(sid, 0, change, attempt=2, now=t, compensation=True).applied
        assert not backend.take_over(
            sid, 0, change, attempt=1, now=t + 31, compensation=True
        ).applied
        assert not backend.take_over(sid, 0, change, attempt=2, now=t + 31).applied  # forward
        taken = backend.take_over(sid, 0, change, attempt=2, now=t + 31, compensation=True)
        assert taken.applied and taken.comp_attempt == 3

    def test_16_threads_take_over_one_expired_lease_exactly_one_wins(
        self, backend: SagaBackend
    ) -> None:
        """16 threads take over one expired lease at once: exactly one applies."""
        t = time.time()
        sid = self._running(backend, owner="gone", expires=t - 1)
        writes = race(
            16,
            lambda i: backend.take_over(
                sid, 0, {"attempt": 2, "lease_owner": None, "task_id": f"t{i}"}, attempt=1, now=t
            ),
        )
        assert sum(w.applied for w in writes) == 1

    def test_record_late_creates_once_then_moves_by_state(self, backend: SagaBackend) -> None:
        """Late successes are kept by attempt; each state change applies once."""
        sid = self._running(backend, owner=None, expires=None)
        first = {"state": "recorded", "output": {"n": 2**60}, "compensation_data": {"id": "x"}}
        assert backend.record_late(sid, 0, 1, first).applied
        assert not backend.record_late(sid, 0, 1, {"state": "recorded"}).applied
        assert backend.record_late(sid, 0, 3, {"state": "recorded", "output": None}).applied
        moved = backend.record_late(sid, 0, 1, {"state": "compensating"}, expect_state="recorded")
        assert moved.applied and moved.status is StepStatus.RUNNING
        assert moved.saga_status is SagaStatus.RUNNING
        assert not backend.record_late(
            sid, 0, 1, {"state": "compensated"}, expect_state="recorded"
        ).applied
        assert not backend.record_late(
            sid, 0, 2, {"state": "compensated"}, expect_state="recorded"
        ).applied
        got = backend.get(sid)
        assert got is not None
        assert got.step(0).late == {
            "1": {**first, "state": "compensating"},
            "3": {"state": "recorded", "output": None},
        }
        with pytest.raises(KeyError):
            backend.record_late(str(uuid.uuid4()), 0, 1, first)

    def test_16_threads_record_one_late_success_exactly_one_wins(
        self, backend: SagaBackend
    ) -> None:
        """16 threads record one attempt's late success at once: exactly one creates the entry."""
        sid = self._running(backend, owner=None, expires=None)
        writes = race(
            16, lambda i: backend.record_late(sid, 0, 1, {"state": "recorded", "writer": i})
        )
        assert sum(w.applied for w in writes) == 1
        got = backend.get(sid)
        late = None if got is None else got.step(0).late
        assert late is not None and set(late) == {"1"}
