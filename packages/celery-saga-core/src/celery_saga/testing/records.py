"""The conformance suite, records: create, read and compare-and-set of executions and steps."""

from __future__ import annotations

import uuid

import pytest

from celery_saga.backends.base import SagaBackend, StartNext, StepExpect
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution, race

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


class RecordTests(SuiteBase):
    """The conformance suite, records (a part of `BackendConformance`)."""

    # -- create and read --------------------------------------------------------------
    def test_create_then_get_round_trips_every_field(self, backend: SagaBackend) -> None:
        """`create` keeps every field of the execution and its steps, and `get` gives them
        back exactly as written (big integers, floats, unicode, nesting); only
        ``updated_at`` may differ."""
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
        """`get` and `find_by_idempotency_key` return None (never raise) for what does not exist."""
        assert backend.get(str(uuid.uuid4())) is None
        assert backend.find_by_idempotency_key("no-such-key") is None

    def test_get_status_reads_the_status_as_it_changes(self, backend: SagaBackend) -> None:
        """`get_status` gives the stored status (None for an unknown id), following each
        `update_saga`, and agrees with `get`; one round trip."""
        assert backend.get_status(str(uuid.uuid4())) is None
        execution = make_execution()
        backend.create(execution)
        backend.stats.reset()
        assert backend.get_status(execution.saga_id) is SagaStatus.RUNNING
        assert backend.stats.round_trips == 1
        for status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED):
            assert backend.update_saga(execution.saga_id, {"status": status})
            assert backend.get_status(execution.saga_id) is status
            got = backend.get(execution.saga_id)
            assert got is not None and got.status is status

    def test_create_with_same_idempotency_key_returns_first(self, backend: SagaBackend) -> None:
        """A second `create` with a known idempotency key returns the first execution,
        ``created=False``; `find_by_idempotency_key` finds it."""
        first, created = backend.create(make_execution(idempotency_key="order-1"))
        second, created_again = backend.create(make_execution(idempotency_key="order-1"))
        assert created and not created_again
        assert second.saga_id == first.saga_id
        found = backend.find_by_idempotency_key("order-1")
        assert found is not None and found.saga_id == first.saga_id

    def test_create_refuses_a_saga_id_that_exists(self, backend: SagaBackend) -> None:
        """`create` of a saga id that is stored already (without an idempotency key that
        names it) raises ValueError ("already exists") and leaves the stored one alone."""
        execution = make_execution(name="first")
        backend.create(execution)
        again = make_execution(name="second")
        again.saga_id = execution.saga_id
        with pytest.raises(ValueError, match="already exists"):
            backend.create(again)
        got = backend.get(execution.saga_id)
        assert got is not None and got.saga_name == "first"

    def test_16_threads_one_idempotency_key_make_one_execution(self, backend: SagaBackend) -> None:
        """16 threads create with one idempotency key at once: one execution, and exactly
        one ``created=True``."""
        results = race(16, lambda i: backend.create(make_execution(idempotency_key="k16")))
        ids = {stored.saga_id for stored, _ in results}
        assert len(ids) == 1
        assert sum(created for _, created in results) == 1
        assert backend.get(ids.pop()) is not None

    # -- compare-and-set ----------------------------------------------------------------
    def test_update_step_applies_and_reports(self, backend: SagaBackend) -> None:
        """An applied `update_step` changes that step only, reports the state after the write
        (`StepWrite`), and sets the execution's ``updated_at``."""
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
        """Each `StepExpect` condition that does not hold refuses the write: nothing changes,
        and the `StepWrite` reports the stored status and attempt."""
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
        """A step's ``output`` and ``compensation_data`` come back exactly as written (JSON)."""
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
        """20 threads compare-and-set one step at once: exactly one applies, and its write
        is the one kept."""
        execution = make_execution()
        backend.create(execution)

        def attempt(i: int) -> bool:
            return backend.update_step(
                execution.saga_id,
                0,
                {"status": StepStatus.SUCCESS, "output": {"winner": i}},
                expect=StepExpect(status=_FORWARD),
            ).applied

        wins = race(20, attempt)
        assert sum(wins) == 1
        got = backend.get(execution.saga_id)
        assert got is not None and got.step(0).output == {"winner": wins.index(True)}

    def test_parallel_group_finishing_at_once_has_exactly_one_last_member(
        self, backend: SagaBackend
    ) -> None:
        """12 members of a parallel stage finish at once bumping one counter (``count_in``): each
        sees a different value 1..12, stored in its ``seq``, so exactly one is the last."""
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

        counts = race(size, finish)
        assert sorted(c for c in counts if c is not None) == list(range(1, size + 1))
        assert counts.count(size) == 1
        got = backend.get(execution.saga_id)
        assert got is not None
        assert sorted(s.seq for s in got.steps[1:] if s.seq is not None) == list(range(1, size + 1))

    def test_finishing_a_stage_reads_the_saga_and_starts_the_next_stage(
        self, backend: SagaBackend
    ) -> None:
        """`update_step_and_get`: the write whose counter reaches ``get_at`` gets the execution back
        and, with `StartNext`, marks the next stage's steps started in the same write."""
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
        """`StartNext` starts nothing when the saga is not RUNNING or a step of ``check`` did not
        succeed; the execution is still returned."""
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
        """A refused write leaves its counter alone: the next applied write sees the next value."""
        execution = make_execution(stages=[0, 0])
        backend.create(execution)
        sid, done = execution.saga_id, {"status": StepStatus.SUCCESS}
        first = backend.update_step(sid, 0, done, expect=StepExpect(status=_FORWARD), count_in="s0")
        again = backend.update_step(sid, 0, done, expect=StepExpect(status=_FORWARD), count_in="s0")
        other = backend.update_step(sid, 1, done, expect=StepExpect(status=_FORWARD), count_in="s0")
        assert (first.count, again.applied, other.count) == (1, False, 2)

    def test_update_step_unknown_saga_or_field(self, backend: SagaBackend) -> None:
        """`update_step` raises KeyError for an unknown saga, and ValueError ("cannot set") for a
        field outside `STEP_MUTABLE_FIELDS`, writing nothing."""
        with pytest.raises(KeyError):
            backend.update_step(str(uuid.uuid4()), 0, {"status": StepStatus.RUNNING})
        execution = make_execution()
        backend.create(execution)
        with pytest.raises(ValueError, match="cannot set"):
            backend.update_step(execution.saga_id, 0, {"task_name": "evil"})
        got = backend.get(execution.saga_id)
        assert got is not None and got.step(0).task_name == "tasks.step0"

    def test_update_saga_compare_and_set(self, backend: SagaBackend) -> None:
        """`update_saga` applies only when the status is one of ``expect_status`` (or always
        without it); False for an unknown saga; ValueError ("cannot set") for a field outside
        `SAGA_MUTABLE_FIELDS`."""
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
        """16 threads compare-and-set the saga status at once: exactly one applies."""
        execution = make_execution()
        backend.create(execution)
        wins = race(
            16,
            lambda i: backend.update_saga(
                execution.saga_id,
                {"status": SagaStatus.COMPLETED, "output": {"by": i}},
                expect_status={SagaStatus.RUNNING},
            ),
        )
        assert sum(wins) == 1
