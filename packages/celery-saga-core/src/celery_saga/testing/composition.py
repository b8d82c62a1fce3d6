"""The conformance suite, composition: parent links, step kinds, child ids, REVERTED.

Saga composition (nested sagas, external steps, revert) stores a few more fields:
the parent link of a child saga (``parent_id``, ``parent_step``), each step's
``kind`` (immutable) and ``child_id``, the ``revert_reason`` of a reverted saga, and
the terminal status REVERTED (COMPLETED -> COMPENSATING -> REVERTED). These tests
check that every store keeps them, lists the children of an execution from an
index, and treats REVERTED like every other finished status.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from celery_saga.backends.base import SagaBackend, StepExpect
from celery_saga.models import SagaExecution, SagaStatus, SagaSummary, StepKind, StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


def _walk(backend: SagaBackend, limit: int, **filters: Any) -> list[SagaSummary]:
    """Every item of a listing, page by page (`limit` per page)."""
    items: list[SagaSummary] = []
    cursor = None
    while True:
        page = backend.list(limit=limit, cursor=cursor, **filters)
        assert len(page.items) <= limit
        items += page.items
        cursor = page.cursor
        if cursor is None:
            return items


def _newest_first(executions: list[SagaExecution]) -> list[str]:
    ordered = sorted(executions, key=lambda e: (e.created_at, e.saga_id), reverse=True)
    return [e.saga_id for e in ordered]


class CompositionTests(SuiteBase):
    """The conformance suite, composition (a part of `BackendConformance`)."""

    # -- the new fields ------------------------------------------------------------------------
    def test_parent_link_step_kinds_child_id_and_revert_reason_round_trip(
        self, backend: SagaBackend
    ) -> None:
        """The composition fields round-trip: ``parent_id``/``parent_step``, each step's ``kind``
        and ``child_id``, ``revert_reason``; a step write keeps ``kind``, listings carry
        ``parent_id``."""
        parent = make_execution(name="composed", steps=3)
        parent.steps[1].kind = StepKind.SAGA.value
        parent.steps[1].task_name = "child.saga"
        parent.steps[2].kind = StepKind.EXTERNAL.value
        parent.steps[2].task_name = "bank.approval"
        backend.create(parent)
        child = make_execution(
            name="child.saga",
            parent_id=parent.saga_id,
            parent_step=1,
            idempotency_key=f"{parent.saga_id}:1",
        )
        stored, created = backend.create(child)
        assert created and stored.parent_id == parent.saga_id
        for execution in (parent, child):
            got = backend.get(execution.saga_id)
            assert got is not None
            assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}
        found = backend.find_by_idempotency_key(f"{parent.saga_id}:1")
        assert found is not None
        assert (found.saga_id, found.parent_id, found.parent_step) == (
            child.saga_id,
            parent.saga_id,
            1,
        )

        sid = parent.saga_id
        write = backend.update_step(
            sid,
            1,
            {"status": StepStatus.RUNNING, "attempt": 1, "child_id": child.saga_id},
            expect=StepExpect(status=_FORWARD, attempt=0),
        )
        assert write.applied and write.status is StepStatus.RUNNING
        assert backend.update_saga(sid, {"revert_reason": "order returned: zażółć"})
        got = backend.get(sid)
        assert got is not None
        assert [s.kind for s in got.steps] == ["task", "saga", "external"]
        assert [s.child_id for s in got.steps] == [None, child.saga_id, None]
        assert (got.revert_reason, got.parent_id, got.parent_step) == (
            "order returned: zażółć",
            None,
            None,
        )
        # A step write that re-encodes the step keeps its kind; child_id can be cleared.
        backend.update_step(sid, 1, {"retries": 2}, count_in="stage:1")
        backend.update_step(sid, 1, {"child_id": None})
        assert backend.update_saga(sid, {"revert_reason": None})
        got = backend.get(sid)
        assert got is not None
        assert (got.step(1).kind, got.step(1).child_id, got.step(1).retries) == ("saga", None, 2)
        assert got.revert_reason is None
        listed = {s.saga_id: s for s in backend.list(limit=10).items}
        assert listed[child.saga_id].parent_id == parent.saga_id
        assert listed[parent.saga_id].parent_id is None

    def test_kind_and_the_parent_link_cannot_be_changed(self, backend: SagaBackend) -> None:
        """``kind`` and the parent link are immutable: writes naming them raise ValueError
        ("cannot set") and change nothing."""
        parent = make_execution()
        backend.create(parent)
        child = make_execution(parent_id=parent.saga_id, parent_step=0)
        backend.create(child)
        sid = child.saga_id
        with pytest.raises(ValueError, match="cannot set"):
            backend.update_step(sid, 0, {"kind": StepKind.SAGA.value})
        with pytest.raises(ValueError, match="cannot set"):
            backend.update_step(sid, 0, {"status": StepStatus.RUNNING, "kind": "external"})
        for field, value in (("parent_id", str(uuid.uuid4())), ("parent_step", 2)):
            with pytest.raises(ValueError, match="cannot set"):
                backend.update_saga(sid, {field: value})
        got = backend.get(sid)
        assert got is not None
        assert (got.step(0).kind, got.step(0).status) == ("task", StepStatus.PENDING)
        assert (got.parent_id, got.parent_step) == (parent.saga_id, 0)

    # -- REVERTED ------------------------------------------------------------------------------
    def test_reverted_is_a_terminal_status_reached_through_compensating(
        self, backend: SagaBackend
    ) -> None:
        """REVERTED is finished like the others: reached COMPLETED -> COMPENSATING -> REVERTED once,
        listed, waited for and purged as finished, never while COMPENSATING."""
        execution, bystander = make_execution(), make_execution()
        for made in (execution, bystander):
            backend.create(made)
        sid = execution.saga_id
        backend.update_step(sid, 0, {"status": StepStatus.SUCCESS, "output": {"id": 2**62 + 1}})
        assert backend.update_saga(
            sid,
            {"status": SagaStatus.COMPLETED, "finished_at": time.time(), "output": {"ok": 1}},
            expect_status={SagaStatus.RUNNING},
        )
        # Revert: COMPLETED -> COMPENSATING, once.
        assert not backend.update_saga(
            sid, {"status": SagaStatus.COMPENSATING}, expect_status={SagaStatus.RUNNING}
        )
        reopen = {"status": SagaStatus.COMPENSATING, "finished_at": None, "revert_reason": "why"}
        assert backend.update_saga(sid, reopen, expect_status={SagaStatus.COMPLETED})
        assert not backend.update_saga(sid, reopen, expect_status={SagaStatus.COMPLETED})
        assert sid in {s.saga_id for s in backend.list(status=SagaStatus.COMPENSATING).items}
        assert sid not in {s.saga_id for s in backend.list(status=SagaStatus.COMPLETED).items}
        with pytest.raises(ValueError, match="only finished"):
            backend.delete(sid)
        assert backend.purge(time.time() + 3600) == 0  # nothing finished: all stay
        write = backend.update_step(
            sid,
            0,
            {"status": StepStatus.COMPENSATED},
            expect=StepExpect(saga_status=frozenset({SagaStatus.COMPENSATING})),
        )
        assert write.applied
        finished = time.time()
        assert backend.update_saga(
            sid,
            {"status": SagaStatus.REVERTED, "finished_at": finished},
            expect_status={SagaStatus.COMPENSATING},
        )
        got = backend.get(sid)
        assert got is not None
        assert (got.status, got.finished_at, got.revert_reason, got.output) == (
            SagaStatus.REVERTED,
            finished,
            "why",
            {"ok": 1},
        )
        assert (got.step(0).status, got.step(0).output) == (
            StepStatus.COMPENSATED,
            {"id": 2**62 + 1},
        )
        assert [s.saga_id for s in backend.list(status=SagaStatus.REVERTED).items] == [sid]
        assert [s.saga_id for s in backend.list(status="reverted").items] == [sid]
        assert sid not in {s.saga_id for s in backend.list(status=SagaStatus.COMPENSATING).items}
        waited = backend.wait(sid, timeout=5)
        assert waited is not None and waited.status is SagaStatus.REVERTED
        assert not backend.update_saga(
            sid, {"status": SagaStatus.COMPENSATING}, expect_status={SagaStatus.COMPLETED}
        )
        # Finished like any other: purged after its retention, never the unfinished one.
        assert backend.purge(finished - 100) == 0
        assert backend.purge(finished + 1) == 1
        assert backend.get(sid) is None and backend.get(bystander.saga_id) is not None
        assert backend.list(status=SagaStatus.REVERTED).items == []

    def test_a_reverted_execution_can_be_deleted(self, backend: SagaBackend) -> None:
        """A REVERTED execution can be deleted, and leaves the listings."""
        execution = make_execution()
        backend.create(execution)
        sid = execution.saga_id
        for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATING, SagaStatus.REVERTED):
            assert backend.update_saga(sid, {"status": status, "finished_at": time.time()})
        assert backend.delete(sid)
        assert backend.get(sid) is None
        assert backend.list(status=SagaStatus.REVERTED).items == []

    def test_reverting_clears_the_expiry_and_reverted_rearms_it(
        self, request: pytest.FixtureRequest
    ) -> None:
        """With a retention period, a COMPLETED execution being reverted does not expire; once
        REVERTED it does."""
        if not self.requirements.expires_finished:
            pytest.skip(
                "this store declares that finished executions never expire "
                "(Requirements.expires_finished)"
            )
        retention = 1
        make: Callable[[int], SagaBackend] = request.getfixturevalue("store_with_retention")
        store = make(retention)
        reverted, stays = make_execution(), make_execution()
        for execution in (reverted, stays):
            store.create(execution)
            store.update_step(execution.saga_id, 0, {"status": StepStatus.SUCCESS})
            assert store.update_saga(
                execution.saga_id, {"status": SagaStatus.COMPLETED, "finished_at": time.time()}
            )
        assert store.update_saga(
            reverted.saga_id,
            {"status": SagaStatus.COMPENSATING, "finished_at": None, "revert_reason": "r"},
            expect_status={SagaStatus.COMPLETED},
        )
        deadline = time.monotonic() + retention + 30
        while store.get(stays.saga_id) is not None:
            assert time.monotonic() < deadline, "a completed execution did not expire"
            time.sleep(0.05)
        deadline = time.monotonic() + retention + 0.5
        while time.monotonic() < deadline:
            got = store.get(reverted.saga_id)
            assert got is not None, "an execution being reverted expired"
            assert got.status is SagaStatus.COMPENSATING and len(got.steps) == 3
            time.sleep(0.1)
        assert store.update_saga(
            reverted.saga_id, {"status": SagaStatus.REVERTED, "finished_at": time.time()}
        )
        deadline = time.monotonic() + retention + 30
        while store.get(reverted.saga_id) is not None:
            assert time.monotonic() < deadline, "a reverted execution did not expire"
            time.sleep(0.05)

    # -- listing the children of an execution --------------------------------------------------
    def test_list_children_of_one_execution_newest_first_with_cursor(
        self, backend: SagaBackend
    ) -> None:
        """`list(parent_id=...)` pages newest first through exactly the children of one execution,
        with every other filter and any page size; deleted or purged children leave it."""
        parent, other = make_execution(name="parent"), make_execution(name="parent")
        for made in (parent, other):
            backend.create(made)
        base = time.time() - 1000
        children: list[SagaExecution] = []
        strangers: list[SagaExecution] = []
        for i in range(9):
            at = base + i // 2  # pairs share a creation time: pages split ties by id
            name = "alpha" if i % 3 else "beta"
            child = make_execution(
                name=name, created_at=at, parent_id=parent.saga_id, parent_step=i
            )
            children.append(child)
            strangers.append(make_execution(name=name, created_at=at))
            strangers.append(make_execution(name=name, created_at=at, parent_id=other.saga_id))
        for made in children + strangers:
            backend.create(made)
        for child in children[::4]:
            backend.update_saga(
                child.saga_id, {"status": SagaStatus.FAILED, "finished_at": time.time()}
            )
        failed = children[::4]
        p = parent.saga_id

        for limit in (1, 2, 3, 50):
            walked = _walk(backend, limit, parent_id=p)
            assert [s.saga_id for s in walked] == _newest_first(children), limit
        assert all(s.parent_id == p for s in _walk(backend, 4, parent_id=p))
        assert [s.saga_id for s in _walk(backend, 2, parent_id=p, status=SagaStatus.FAILED)] == (
            _newest_first(failed)
        )
        alpha = [c for c in children if c.saga_name == "alpha"]
        assert [s.saga_id for s in _walk(backend, 2, parent_id=p, name="alpha")] == (
            _newest_first(alpha)
        )
        running_beta = [c for c in children if c.saga_name == "beta" and c not in failed]
        both = _walk(backend, 1, parent_id=p, name="beta", status="running")
        assert [s.saga_id for s in both] == _newest_first(running_beta)
        aged = _walk(backend, 2, parent_id=p, created_before=base + 3, created_after=base)
        assert [s.saga_id for s in aged] == _newest_first(
            [c for c in children if base < c.created_at < base + 3]
        )
        assert [s.saga_id for s in _walk(backend, 3, parent_id=other.saga_id)] == (
            _newest_first([e for e in strangers if e.parent_id == other.saga_id])
        )
        assert backend.list(parent_id=str(uuid.uuid4())).items == []
        assert backend.list(parent_id=children[0].saga_id).items == []  # no grandchildren
        # The unfiltered listing still holds every execution, children included.
        everything = {s.saga_id for s in _walk(backend, 50)}
        assert {e.saga_id for e in children + strangers + [parent, other]} == everything

        # A deleted or purged child leaves its parent's listing.
        assert backend.delete(failed[0].saga_id)
        assert backend.purge(time.time() + 1) == len(failed) - 1
        left = [c for c in children if c not in failed]
        assert [s.saga_id for s in _walk(backend, 3, parent_id=p)] == _newest_first(left)
        assert backend.list(parent_id=p, status=SagaStatus.FAILED).items == []
