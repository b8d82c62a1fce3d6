"""The conformance suite, lifecycle: listing, housekeeping, leaving a terminal status, waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from celery_saga.backends.base import SagaBackend, StepExpect
from celery_saga.models import SagaExecution, SagaStatus, StepStatus
from celery_saga.testing.kit import SuiteBase, make_execution

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


class ListingTests(SuiteBase):
    """The conformance suite, lifecycle (a part of `BackendConformance`)."""

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
        """`list(status=...)` pages newest first through exactly the executions in that status;
        the status may be given as a string."""
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
        """A listing walked page by page while another thread creates executions neither repeats
        nor skips one (the cursor is a position, not an offset)."""
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
        """`name`, `status`, `created_before` and `created_after` (both exclusive) combine."""
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
        """An unknown status, a limit outside 1..1000 and a foreign cursor raise ValueError naming
        the argument."""
        with pytest.raises(ValueError, match="status"):
            backend.list(status="exploded")
        with pytest.raises(ValueError, match="limit"):
            backend.list(limit=0)
        with pytest.raises(ValueError, match="cursor"):
            backend.list(cursor="not a cursor!")

    # -- housekeeping --------------------------------------------------------------------------
    def test_purge_removes_only_finished_older_than_cutoff(self, backend: SagaBackend) -> None:
        """`purge` deletes finished executions that finished before the cutoff, and frees their
        idempotency keys; it never touches a running one or a newer one."""
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
        """`delete` raises ValueError ("only finished") for an unfinished execution, deletes a
        finished one, and returns False for one that is not there."""
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
        """An execution taken back from FAILED to COMPENSATING (an operator retry) keeps its steps
        and fields, and is listed under its new status only."""
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
        """With a retention period (`Requirements.expires_finished`), an execution taken back from a
        finished status does not expire; finishing it again re-arms the expiry."""
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
        """`wait` returns the execution once another thread moves it to a finished status."""
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

    def test_wait_outcome_says_the_end_and_a_completed_output(self, backend: SagaBackend) -> None:
        """`wait_outcome` (what ``SagaResult.get()`` calls) says how the execution ended once
        another thread finishes it: the status, a completion's output, and the execution
        itself when the store read it; None on timeout."""
        for status, output in ((SagaStatus.COMPLETED, {"ok": [1, "é"]}), (SagaStatus.FAILED, None)):
            execution = make_execution()
            backend.create(execution)
            changes: dict[str, Any] = {"status": status}
            if output is not None:
                changes["output"] = output
            timer = threading.Timer(0.3, backend.update_saga, (execution.saga_id, changes))
            timer.start()
            try:
                got = backend.wait_outcome(execution.saga_id, timeout=10)
            finally:
                timer.join()
            assert got is not None and got.status is status
            if status is SagaStatus.COMPLETED:
                assert got.output == output
            if got.execution is not None:
                assert got.execution.saga_id == execution.saga_id
                assert got.execution.status is status
        waiting = make_execution()
        backend.create(waiting)
        assert backend.wait_outcome(waiting.saga_id, timeout=0.2) is None

    def test_wait_is_woken_by_a_notification_not_by_polling(self, backend: SagaBackend) -> None:
        """A store that declares `Requirements.notifies_completion` wakes `wait` by a notification,
        making a handful of requests, not a polling loop's."""
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
        """`wait` returns None once its timeout has passed (and not much later)."""
        execution = make_execution()
        backend.create(execution)
        started = time.monotonic()
        assert backend.wait(execution.saga_id, timeout=0.3) is None
        assert 0.25 <= time.monotonic() - started < 5
