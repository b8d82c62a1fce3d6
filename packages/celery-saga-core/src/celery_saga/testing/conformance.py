"""The conformance suite every state store runs, ours and third parties' alike.

Subclass `BackendConformance` in a test module and provide a `backend` fixture
that returns a fresh, empty store::

    from celery_saga.testing import BackendConformance

    class TestMyStore(BackendConformance):
        @pytest.fixture
        def backend(self):
            store = MyStore.from_url("mystore://localhost/test")
            yield store
            store.close()

A store that cannot meet a test must say so: override it with
``@pytest.mark.xfail(reason=...)``. Overriding a suite test without that mark,
or deleting one, is refused when the class is defined.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest

from celery_saga.backends.base import Lease, SagaBackend, StartNext, StepExpect
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, StepStatus

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


def make_execution(
    *,
    steps: int = 3,
    stages: list[int] | None = None,
    name: str = "conformance",
    idempotency_key: str | None = None,
    created_at: float | None = None,
    status: SagaStatus = SagaStatus.RUNNING,
    input: dict[str, Any] | None = None,
) -> SagaExecution:
    """An execution with `steps` PENDING steps (`stages[i]` is step i's stage)."""
    stages = stages or list(range(steps))
    return SagaExecution(
        saga_id=str(uuid.uuid4()),
        saga_name=name,
        status=status,
        input=input if input is not None else {"order_id": "A-1", "amount": 10},
        idempotency_key=idempotency_key,
        definition_hash="0123456789abcdef",
        created_at=created_at if created_at is not None else time.time(),
        steps=[
            StepRecord(
                index=i,
                task_name=f"tasks.step{i}",
                stage=stages[i],
                compensation_task_name=f"tasks.undo{i}",
            )
            for i in range(len(stages))
        ],
    )


def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


class Requirements:
    """What a store supports; override a property to declare a capability it lacks.

    Tests guarded by a requirement are skipped, with the reason shown, when the
    store declares it does not have it.
    """

    @property
    def notifies_completion(self) -> bool:
        """`wait()` wakes on a notification rather than by polling."""
        return False

    @property
    def shared_between_processes(self) -> bool:
        """Workers in other processes see the same executions."""
        return True

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        """`renew_leases` renews any number of leases in one request (counted in `stats`),
        at least when every one is still held (the common case)."""
        return False

    @property
    def expires_finished(self) -> bool:
        """Finished executions can be set to expire after a retention period (a TTL).

        A store that declares it must also override the `store_with_retention` fixture.
        """
        return False


class BackendConformance:
    """The contract of `celery_saga.backends.SagaBackend`, as pytest tests."""

    __test__ = False
    requirements: ClassVar[Requirements] = Requirements()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True
        for name, member in BackendConformance.__dict__.items():
            if not name.startswith("test_"):
                continue
            override = cls.__dict__.get(name)
            if name in cls.__dict__ and override is None:
                raise TypeError(f"{cls.__name__} deletes the conformance test {name}")
            if override is not None and override is not member:
                marks = getattr(override, "pytestmark", [])
                if not any(m.name == "xfail" and m.kwargs.get("reason") for m in marks):
                    raise TypeError(
                        f"{cls.__name__} overrides the conformance test {name}: mark the "
                        "override @pytest.mark.xfail(reason='why this store cannot') instead"
                    )

    @pytest.fixture
    def backend(self) -> SagaBackend:
        """Provide a fresh, empty store (subclasses must override this fixture)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `backend` fixture that yields a fresh, "
            "empty SagaBackend"
        )

    @pytest.fixture
    def store_with_retention(self) -> Callable[[int], SagaBackend]:
        """Provide a factory: ``make(seconds)`` is a fresh, empty store whose finished
        executions expire `seconds` after they finish (stores that declare
        `Requirements.expires_finished` must override this fixture, and close what
        they made afterwards)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares Requirements.expires_finished: it must define a "
            "`store_with_retention` fixture that returns a factory make(seconds) -> SagaBackend"
        )

    # -- create and read --------------------------------------------------------------
    def test_create_then_get_round_trips_every_field(self, backend: SagaBackend) -> None:
        execution = make_execution(
            input={
                "big": 2**62 + 1,
                "pi": 3.141592653589793,
                "text": "zażółć 🎉",
                "nested": {"l": [1, None, True]},
            }
        )
        stored, created = backend.create(execution)
        assert created and stored.saga_id == execution.saga_id
        got = backend.get(execution.saga_id)
        assert got is not None
        assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}

    def test_get_unknown_returns_none(self, backend: SagaBackend) -> None:
        assert backend.get(str(uuid.uuid4())) is None
        assert backend.find_by_idempotency_key("no-such-key") is None

    def test_create_with_same_idempotency_key_returns_first(self, backend: SagaBackend) -> None:
        first, created = backend.create(make_execution(idempotency_key="order-1"))
        second, created_again = backend.create(make_execution(idempotency_key="order-1"))
        assert created and not created_again
        assert second.saga_id == first.saga_id
        found = backend.find_by_idempotency_key("order-1")
        assert found is not None and found.saga_id == first.saga_id

    def test_16_threads_one_idempotency_key_make_one_execution(self, backend: SagaBackend) -> None:
        results = _race(16, lambda i: backend.create(make_execution(idempotency_key="k16")))
        ids = {stored.saga_id for stored, _ in results}
        assert len(ids) == 1
        assert sum(created for _, created in results) == 1
        assert backend.get(ids.pop()) is not None

    # -- compare-and-set ----------------------------------------------------------------
    def test_update_step_applies_and_reports(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        write = backend.update_step(
            execution.saga_id,
            1,
            {"status": StepStatus.RUNNING, "attempt": 1, "task_id": "t-1"},
            expect=StepExpect(status=_FORWARD, attempt_at_most=1),
        )
        assert write.applied and write.status is StepStatus.RUNNING and write.attempt == 1
        assert write.saga_status is SagaStatus.RUNNING
        got = backend.get(execution.saga_id)
        assert got is not None
        step = got.step(1)
        assert (step.status, step.attempt, step.task_id) == (StepStatus.RUNNING, 1, "t-1")
        assert got.step(0).status is StepStatus.PENDING and got.step(2).status is StepStatus.PENDING
        assert got.updated_at >= execution.updated_at

    def test_update_step_refuses_unmet_expectations(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        sid = execution.saga_id
        backend.update_step(sid, 0, {"status": StepStatus.RUNNING, "attempt": 2})
        cases = [
            StepExpect(status=frozenset({StepStatus.PENDING})),
            StepExpect(attempt=1),
            StepExpect(attempt_at_most=1),
            StepExpect(saga_status=frozenset({SagaStatus.COMPENSATING})),
            StepExpect(comp_attempt=1),
            StepExpect(comp_attempt_at_most=-1),
        ]
        for expect in cases:
            write = backend.update_step(sid, 0, {"error": "must not be written"}, expect=expect)
            assert not write.applied, expect
            assert (write.status, write.attempt) == (StepStatus.RUNNING, 2)
        got = backend.get(sid)
        assert got is not None and got.step(0).error is None

    def test_update_step_output_keeps_json_exact(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        output = {"id": 2**63 - 1, "ratio": 0.1 + 0.2, "name": "Ünïcode", "items": [{"a": []}]}
        backend.update_step(
            execution.saga_id,
            0,
            {"status": StepStatus.SUCCESS, "output": output, "compensation_data": ["x", 1]},
        )
        got = backend.get(execution.saga_id)
        assert got is not None
        assert got.step(0).output == output
        assert got.step(0).compensation_data == ["x", 1]

    def test_20_threads_compare_and_set_one_step_exactly_one_wins(
        self, backend: SagaBackend
    ) -> None:
        execution = make_execution()
        backend.create(execution)

        def attempt(i: int) -> bool:
            return backend.update_step(
                execution.saga_id,
                0,
                {"status": StepStatus.SUCCESS, "output": {"winner": i}},
                expect=StepExpect(status=_FORWARD),
            ).applied

        wins = _race(20, attempt)
        assert sum(wins) == 1
        got = backend.get(execution.saga_id)
        assert got is not None and got.step(0).output == {"winner": wins.index(True)}

    def test_parallel_group_finishing_at_once_has_exactly_one_last_member(
        self, backend: SagaBackend
    ) -> None:
        size = 12
        execution = make_execution(stages=[0] + [1] * size)
        backend.create(execution)

        def finish(i: int) -> int | None:
            return backend.update_step(
                execution.saga_id,
                i + 1,
                {"status": StepStatus.SUCCESS, "output": {"n": i}},
                expect=StepExpect(status=_FORWARD),
                count_in="stage:1",
            ).count

        counts = _race(size, finish)
        assert sorted(c for c in counts if c is not None) == list(range(1, size + 1))
        assert counts.count(size) == 1
        got = backend.get(execution.saga_id)
        assert got is not None
        assert sorted(s.seq for s in got.steps[1:] if s.seq is not None) == list(range(1, size + 1))

    def test_finishing_a_stage_reads_the_saga_and_starts_the_next_stage(
        self, backend: SagaBackend
    ) -> None:
        sid = self._two_stages(backend)
        done = {"status": StepStatus.SUCCESS, "output": {"ok": 1}}
        start = StartNext(
            check=(0, 1),
            start=(2, 3),
            changes={
                i: {"status": StepStatus.RUNNING, "attempt": 1, "task_id": f"t{i}"} for i in (2, 3)
            },
        )
        first, none = backend.update_step_and_get(
            sid,
            0,
            done,
            expect=StepExpect(status=_FORWARD),
            count_in="stage:0",
            get_at=2,
            start_next=start,
        )
        assert first.count == 1 and none is None
        last, execution = backend.update_step_and_get(
            sid,
            1,
            done,
            expect=StepExpect(status=_FORWARD),
            count_in="stage:0",
            get_at=2,
            start_next=start,
        )
        assert last.count == 2 and execution is not None
        assert execution.step(1).status is StepStatus.SUCCESS and execution.step(1).seq == 2
        for i in (2, 3):
            assert (execution.step(i).status, execution.step(i).attempt) == (StepStatus.RUNNING, 1)
        stored = backend.get(sid)
        assert stored is not None and stored.step(3).task_id == "t3"

    def test_next_stage_is_not_started_unless_the_saga_can_go_on(
        self, backend: SagaBackend
    ) -> None:
        done = {"status": StepStatus.SUCCESS}
        for spoil in ("saga", "member"):
            sid = self._two_stages(backend)
            if spoil == "saga":
                backend.update_saga(sid, {"status": SagaStatus.COMPENSATING})
                backend.update_step(sid, 0, done, count_in="stage:0")
            else:
                backend.update_step(sid, 0, {"status": StepStatus.FAILED}, count_in="stage:0")
            start = StartNext(
                check=(0, 1),
                start=(2, 3),
                changes={i: {"status": StepStatus.RUNNING, "attempt": 1} for i in (2, 3)},
            )
            write, execution = backend.update_step_and_get(
                sid, 1, done, count_in="stage:0", get_at=2, start_next=start
            )
            assert write.count == 2 and execution is not None
            assert [execution.step(i).status for i in (2, 3)] == [StepStatus.PENDING] * 2
            stored = backend.get(sid)
            assert stored is not None and stored.step(2).status is StepStatus.PENDING

    def _two_stages(self, backend: SagaBackend) -> str:
        execution = make_execution(stages=[0, 0, 1, 1])
        backend.create(execution)
        return execution.saga_id

    def test_counter_not_bumped_when_refused(self, backend: SagaBackend) -> None:
        execution = make_execution(stages=[0, 0])
        backend.create(execution)
        sid, done = execution.saga_id, {"status": StepStatus.SUCCESS}
        first = backend.update_step(sid, 0, done, expect=StepExpect(status=_FORWARD), count_in="s0")
        again = backend.update_step(sid, 0, done, expect=StepExpect(status=_FORWARD), count_in="s0")
        other = backend.update_step(sid, 1, done, expect=StepExpect(status=_FORWARD), count_in="s0")
        assert (first.count, again.applied, other.count) == (1, False, 2)

    def test_update_step_unknown_saga_or_field(self, backend: SagaBackend) -> None:
        with pytest.raises(KeyError):
            backend.update_step(str(uuid.uuid4()), 0, {"status": StepStatus.RUNNING})
        execution = make_execution()
        backend.create(execution)
        with pytest.raises(ValueError, match="cannot set"):
            backend.update_step(execution.saga_id, 0, {"task_name": "evil"})
        got = backend.get(execution.saga_id)
        assert got is not None and got.step(0).task_name == "tasks.step0"

    def test_update_saga_compare_and_set(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        sid = execution.saga_id
        assert backend.update_saga(
            sid,
            {"status": SagaStatus.COMPENSATING, "error": "boom"},
            expect_status={SagaStatus.RUNNING},
        )
        assert not backend.update_saga(
            sid, {"status": SagaStatus.COMPLETED}, expect_status={SagaStatus.RUNNING}
        )
        assert backend.update_saga(sid, {"error": "changed"})
        got = backend.get(sid)
        assert got is not None
        assert (got.status, got.error) == (SagaStatus.COMPENSATING, "changed")
        assert not backend.update_saga(str(uuid.uuid4()), {"error": "x"})
        with pytest.raises(ValueError, match="cannot set"):
            backend.update_saga(sid, {"saga_name": "evil"})

    def test_16_threads_update_saga_exactly_one_wins(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        wins = _race(
            16,
            lambda i: backend.update_saga(
                execution.saga_id,
                {"status": SagaStatus.COMPLETED, "output": {"by": i}},
                expect_status={SagaStatus.RUNNING},
            ),
        )
        assert sum(wins) == 1

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
        t = time.time()
        sid = self._running(backend, owner="gone", expires=t - 1)
        writes = _race(
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
        sid = self._running(backend, owner=None, expires=None)
        writes = _race(
            16, lambda i: backend.record_late(sid, 0, 1, {"state": "recorded", "writer": i})
        )
        assert sum(w.applied for w in writes) == 1
        got = backend.get(sid)
        late = None if got is None else got.step(0).late
        assert late is not None and set(late) == {"1"}

    # -- listing ----------------------------------------------------------------------------
    def _fill(self, backend: SagaBackend, n: int, **kw: Any) -> list[SagaExecution]:
        base = time.time() - 1000
        made = []
        for i in range(n):
            execution = make_execution(created_at=base + i, **kw)
            backend.create(execution)
            made.append(execution)
        return made

    def test_list_by_status_newest_first_with_cursor(self, backend: SagaBackend) -> None:
        made = self._fill(backend, 25)
        for execution in made[::2]:
            backend.update_saga(
                execution.saga_id, {"status": SagaStatus.FAILED, "finished_at": time.time()}
            )
        failed = [e.saga_id for e in reversed(made[::2])]
        seen: list[str] = []
        cursor = None
        while True:
            page = backend.list(status=SagaStatus.FAILED, limit=5, cursor=cursor)
            assert len(page.items) <= 5
            seen += [s.saga_id for s in page.items]
            assert all(s.status is SagaStatus.FAILED for s in page.items)
            cursor = page.cursor
            if cursor is None:
                break
        assert seen == failed
        running = backend.list(status="running", limit=100)
        assert {s.saga_id for s in running.items} == {e.saga_id for e in made[1::2]}

    def test_list_cursor_never_repeats_or_skips_while_others_write(
        self, backend: SagaBackend
    ) -> None:
        made = self._fill(backend, 60)
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                backend.create(make_execution())
                backend.create(
                    make_execution(created_at=time.time() - 5000, status=SagaStatus.FAILED)
                )

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            seen: list[str] = []
            cursor = None
            while True:
                page = backend.list(
                    status=SagaStatus.RUNNING,
                    limit=7,
                    cursor=cursor,
                    created_before=made[-1].created_at + 0.5,
                )
                seen += [s.saga_id for s in page.items]
                cursor = page.cursor
                if cursor is None:
                    break
        finally:
            stop.set()
            thread.join()
        assert len(seen) == len(set(seen))
        assert seen == [e.saga_id for e in reversed(made)]

    def test_list_filters_by_name_and_age(self, backend: SagaBackend) -> None:
        a = self._fill(backend, 4, name="alpha")
        b = self._fill(backend, 3, name="beta")
        page = backend.list(name="beta", limit=50)
        assert [s.saga_id for s in page.items] == [e.saga_id for e in reversed(b)]
        both = backend.list(name="alpha", status=SagaStatus.RUNNING, limit=50)
        assert {s.saga_id for s in both.items} == {e.saga_id for e in a}
        cutoff = a[2].created_at
        older = backend.list(name="alpha", created_before=cutoff, limit=50)
        assert [s.saga_id for s in older.items] == [a[1].saga_id, a[0].saga_id]
        newer = backend.list(name="alpha", created_after=cutoff, limit=50)
        assert [s.saga_id for s in newer.items] == [a[3].saga_id]

    def test_list_rejects_bad_arguments(self, backend: SagaBackend) -> None:
        with pytest.raises(ValueError, match="status"):
            backend.list(status="exploded")
        with pytest.raises(ValueError, match="limit"):
            backend.list(limit=0)
        with pytest.raises(ValueError, match="cursor"):
            backend.list(cursor="not a cursor!")

    # -- housekeeping --------------------------------------------------------------------------
    def test_purge_removes_only_finished_older_than_cutoff(self, backend: SagaBackend) -> None:
        old, recent, running = make_execution(), make_execution(), make_execution()
        old_keyed = make_execution(idempotency_key="purge-me")
        for execution in (old, recent, running, old_keyed):
            backend.create(execution)
        cutoff = time.time()
        for execution in (old, old_keyed):
            backend.update_saga(
                execution.saga_id, {"status": SagaStatus.COMPLETED, "finished_at": cutoff - 100}
            )
        backend.update_saga(
            recent.saga_id, {"status": SagaStatus.COMPENSATED, "finished_at": cutoff + 100}
        )
        assert backend.purge(cutoff) == 2
        assert backend.get(old.saga_id) is None and backend.get(old_keyed.saga_id) is None
        assert backend.get(recent.saga_id) is not None
        assert backend.get(running.saga_id) is not None
        assert backend.find_by_idempotency_key("purge-me") is None
        listed = {s.saga_id for s in backend.list(limit=100).items}
        assert old.saga_id not in listed and recent.saga_id in listed
        again, created = backend.create(make_execution(idempotency_key="purge-me"))
        assert created and again.saga_id != old_keyed.saga_id

    def test_delete_refuses_unfinished(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        with pytest.raises(ValueError, match="only finished"):
            backend.delete(execution.saga_id)
        assert backend.get(execution.saga_id) is not None
        backend.update_saga(execution.saga_id, {"status": SagaStatus.FAILED})
        assert backend.delete(execution.saga_id)
        assert backend.get(execution.saga_id) is None
        assert not backend.delete(execution.saga_id)

    # -- leaving a terminal status ----------------------------------------------------------------
    def test_execution_taken_back_from_terminal_to_active_keeps_everything(
        self, backend: SagaBackend
    ) -> None:
        execution = make_execution()
        backend.create(execution)
        sid = execution.saga_id
        backend.update_step(sid, 0, {"status": StepStatus.SUCCESS, "output": {"id": 2**62 + 1}})
        backend.update_step(
            sid,
            1,
            {"status": StepStatus.COMPENSATION_FAILED, "error": "boom", "comp_error": "no undo"},
        )
        assert backend.update_saga(
            sid, {"status": SagaStatus.FAILED, "finished_at": time.time(), "error": "boom"}
        )
        failed = backend.get(sid)
        assert failed is not None
        # What an operator retry does: FAILED goes back to COMPENSATING.
        assert backend.update_saga(
            sid,
            {"status": SagaStatus.COMPENSATING, "finished_at": None},
            expect_status={SagaStatus.FAILED},
        )
        assert not backend.update_saga(
            sid, {"status": SagaStatus.COMPENSATING}, expect_status={SagaStatus.FAILED}
        )
        got = backend.get(sid)
        assert got is not None
        assert (got.status, got.finished_at, got.error) == (SagaStatus.COMPENSATING, None, "boom")
        assert [s.to_dict() for s in got.steps] == [s.to_dict() for s in failed.steps]
        assert got.step(0).output == {"id": 2**62 + 1}
        write = backend.update_step(
            sid,
            1,
            {"status": StepStatus.COMPENSATED},
            expect=StepExpect(saga_status=frozenset({SagaStatus.COMPENSATING})),
        )
        assert write.applied and write.saga_status is SagaStatus.COMPENSATING
        listed = {s.saga_id for s in backend.list(status=SagaStatus.COMPENSATING).items}
        assert sid in listed
        assert sid not in {s.saga_id for s in backend.list(status=SagaStatus.FAILED).items}

    def test_leaving_a_terminal_status_clears_the_expiry(
        self, request: pytest.FixtureRequest
    ) -> None:
        if not self.requirements.expires_finished:
            pytest.skip(
                "this store declares that finished executions never expire "
                "(Requirements.expires_finished)"
            )
        retention = 1
        make: Callable[[int], SagaBackend] = request.getfixturevalue("store_with_retention")
        store = make(retention)
        retried, stays = make_execution(), make_execution()
        for execution in (retried, stays):
            store.create(execution)
            store.update_step(execution.saga_id, 0, {"status": StepStatus.SUCCESS})
        # `retried` finishes first, so its expiry, were it still armed, comes first.
        for execution in (retried, stays):
            assert store.update_saga(
                execution.saga_id, {"status": SagaStatus.FAILED, "finished_at": time.time()}
            )
        assert store.update_saga(
            retried.saga_id,
            {"status": SagaStatus.COMPENSATING, "finished_at": None},
            expect_status={SagaStatus.FAILED},
        )
        # The execution that stayed finished expires (so this store's retention works
        # and its time has passed for both)...
        deadline = time.monotonic() + retention + 30
        while store.get(stays.saga_id) is not None:
            assert time.monotonic() < deadline, "a finished execution did not expire"
            time.sleep(0.05)
        # ...while the unfinished one is still there, for another retention period too.
        deadline = time.monotonic() + retention + 0.5
        while True:
            got = store.get(retried.saga_id)
            assert got is not None, "an unfinished execution expired"
            assert got.status is SagaStatus.COMPENSATING
            assert got.step(0).status is StepStatus.SUCCESS and len(got.steps) == 3
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        # Finishing it again arms the expiry again.
        assert store.update_saga(
            retried.saga_id, {"status": SagaStatus.COMPENSATED, "finished_at": time.time()}
        )
        deadline = time.monotonic() + retention + 30
        while store.get(retried.saga_id) is not None:
            assert time.monotonic() < deadline, "a finished execution did not expire"
            time.sleep(0.05)

    # -- waiting ----------------------------------------------------------------------------------
    def test_wait_returns_when_terminal(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        timer = threading.Timer(
            0.3,
            lambda: backend.update_saga(
                execution.saga_id, {"status": SagaStatus.COMPLETED, "output": {"ok": 1}}
            ),
        )
        timer.start()
        try:
            got = backend.wait(execution.saga_id, timeout=10)
        finally:
            timer.join()
        assert got is not None and got.status is SagaStatus.COMPLETED and got.output == {"ok": 1}

    def test_wait_is_woken_by_a_notification_not_by_polling(self, backend: SagaBackend) -> None:
        if not self.requirements.notifies_completion:
            pytest.skip("this store declares that wait() polls (Requirements.notifies_completion)")
        execution = make_execution()
        backend.create(execution)
        before = backend.stats.round_trips
        timer = threading.Timer(
            1.0, lambda: backend.update_saga(execution.saga_id, {"status": SagaStatus.FAILED})
        )
        timer.start()
        try:
            started = time.monotonic()
            got = backend.wait(execution.saga_id, timeout=20)
            waited = time.monotonic() - started
        finally:
            timer.join()
        assert got is not None and got.status is SagaStatus.FAILED
        assert waited < 5
        # One read before waiting, one after the notification, and the update itself:
        # a polling loop would have made many more requests in that second.
        assert backend.stats.round_trips - before <= 6

    def test_wait_times_out(self, backend: SagaBackend) -> None:
        execution = make_execution()
        backend.create(execution)
        started = time.monotonic()
        assert backend.wait(execution.saga_id, timeout=0.3) is None
        assert 0.25 <= time.monotonic() - started < 5
