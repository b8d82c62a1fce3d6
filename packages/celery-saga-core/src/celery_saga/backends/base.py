"""`SagaBackend`: the contract every state store meets.

Operations are atomic and small: a step write costs O(that step), never a rewrite
of the whole execution. The runtime never loads, edits and saves a record; it asks
the store to compare-and-set. `celery_saga.testing` checks a store against this
contract, races included.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from celery_saga.backends.helpers import (
    SAGA_MUTABLE_FIELDS,
    check_limit,
    check_saga_changes,
    check_step_changes,
    decode_cursor,
    encode_cursor,
    is_terminal,
    normalize_status,
    payload_size,
    plain_value,
)
from celery_saga.backends.writes import (
    Lease,
    Outcome,
    Page,
    StartNext,
    StepExpect,
    StepWrite,
    StoreStats,
)
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    StepStatus,
)

#: The contract's names, and the store helpers (from `helpers`: stores may import them
#: from either module, as they did before the helpers moved).
__all__ = [
    "SAGA_MUTABLE_FIELDS",
    "Lease",
    "Outcome",
    "Page",
    "SagaBackend",
    "StartNext",
    "StepExpect",
    "StepWrite",
    "StoreStats",
    "check_limit",
    "check_saga_changes",
    "check_step_changes",
    "decode_cursor",
    "encode_cursor",
    "is_terminal",
    "normalize_status",
    "payload_size",
    "plain_value",
]


_RUNNING_ONLY = frozenset({SagaStatus.RUNNING})
_RUNNING_STEP = frozenset({StepStatus.RUNNING})
_COMPENSATING_ONLY = frozenset({StepStatus.COMPENSATING})
_FORWARD_STEP = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


class SagaBackend(abc.ABC):
    """Abstract state store.

    Subclasses implement the abstract methods atomically against their server and
    declare the URL schemes they serve in the entry-point group
    ``celery_saga.backends``. Every write but a lease renewal sets the execution's
    ``updated_at``.
    """

    #: URL schemes this class serves (informational; the entry points decide).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Seconds between polls in the default `wait` (stores with notifications override it).
    poll_interval: ClassVar[float] = 0.05

    @property
    def stats(self) -> StoreStats:
        """Round trips and bytes written by this store object (see `StoreStats`)."""
        found: StoreStats | None = self.__dict__.get("_stats")
        if found is None:
            found = self.__dict__["_stats"] = StoreStats()
        return found

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SagaBackend:
        """Build a store from a URL such as ``redis://localhost:6379/0``."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a URL ({url!r})")

    @classmethod
    def open_for_reading(cls, url: str, **options: Any) -> SagaBackend:
        """Open the store at `url` without creating anything: no file, table or index.

        Read-only tools (``celery saga list`` and ``show``) open stores this way, so a
        mistyped URL says that nothing is there instead of leaving an empty store
        behind. A store whose first use creates something (a database file, tables,
        indexes) overrides this, and its operations then raise
        `celery_saga.errors.StoreNotFound` (naming what is missing) when the store does
        not exist. This default is `from_url`, for stores that create nothing by reading.
        """
        return cls.from_url(url, **options)

    # -- create and read --------------------------------------------------------
    @abc.abstractmethod
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        """Store a new execution, or return the existing one with the same idempotency key.

        Atomic under concurrent callers: exactly one caller gets ``created=True``.
        """

    @abc.abstractmethod
    def get(self, saga_id: str) -> SagaExecution | None:
        """Read one execution with all its steps, or None if there is none."""

    def get_status(self, saga_id: str) -> SagaStatus | None:
        """The execution's status alone, or None if there is none.

        What a caller polling for the end needs (`SagaResult.status`, a polling `wait`):
        stores read the one field instead of every step. This default reads them all.
        """
        execution = self.get(saga_id)
        return None if execution is None else execution.status

    @abc.abstractmethod
    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        """The execution created with this idempotency key, if any."""

    # -- compare-and-set -------------------------------------------------------------
    @abc.abstractmethod
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        """Set execution fields if its status is one of `expect_status`; True if applied."""

    @abc.abstractmethod
    def update_step(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> StepWrite:
        """Compare-and-set one step's fields.

        If `expect` holds, apply `changes`; then, if `count_in` names a counter of
        the execution, increment it and store its new value in the step's ``seq``
        field, in the same atomic write. Among writers bumping one counter exactly
        one sees any given value, which is how the last member of a parallel group
        is found.
        """

    def update_step_and_get(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
        get_at: int | None = None,
        start_next: StartNext | None = None,
        read: bool = True,
    ) -> tuple[StepWrite, SagaExecution | None]:
        """`update_step`, plus the whole execution when the counter reaches `get_at`.

        The runtime calls this when a step finishes: the member that completes its
        stage needs the records to decide what comes next. With `start_next`, when
        the counter reaches `get_at`, the execution is RUNNING and every step of
        ``start_next.check`` is SUCCESS, the steps of ``start_next.start`` that are
        still PENDING at attempt 0 get ``start_next.changes`` (they are marked
        started, so their messages need no gate); the write reports them in
        ``StepWrite.started``. With ``read=False`` the caller does not need the
        execution and the store may leave it out. This default makes several
        requests; stores that can do it in one round trip override it.
        """
        write = self.update_step(saga_id, index, changes, expect=expect, count_in=count_in)
        if not (write.applied and get_at is not None and write.count == get_at):
            return write, None
        execution = self.get(saga_id)
        started: list[int] = []
        if execution is not None and start_next is not None and start_next.ready(execution):
            pending = frozenset({StepStatus.PENDING})
            for i in start_next.start:
                if self.update_step(
                    saga_id,
                    i,
                    start_next.changes[i],
                    expect=StepExpect(status=pending, attempt=0, saga_status=_RUNNING_ONLY),
                ).applied:
                    start_next.apply(execution, i)
                    started.append(i)
        return replace(write, started=tuple(started)), execution

    def update_step_and_finish(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        saga_changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> tuple[StepWrite, bool]:
        """`update_step`, and `saga_changes` on the execution in the same write if the
        step's write applied and the execution was RUNNING; True as second value if so.

        The runtime calls this for the success of a saga's last step: the step's outcome
        and the saga's end are one write. This default makes two requests (`update_step`,
        then `update_saga` expecting RUNNING); stores that can, override it with one.
        """
        check_saga_changes(saga_changes)
        write = self.update_step(saga_id, index, changes, expect=expect, count_in=count_in)
        if not write.applied:
            return write, False
        return write, self.update_saga(saga_id, saga_changes, expect_status=_RUNNING_ONLY)

    # -- leases and late outcomes -----------------------------------------------------
    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """Extend each lease to `expires_at`; return the leases that are lost.

        A lease is kept when the step still runs that attempt (RUNNING at
        `Lease.attempt`, or COMPENSATING at that compensation attempt) and its
        stored owner is the lease's owner, or nobody: a step marked started with its
        stage has no owner until its worker's first renewal claims it. A lease whose
        step moved on, or that another owner took over, is lost and left untouched.
        Leases of executions that no longer exist are lost too. A renewal is not
        progress: it leaves the execution's ``updated_at`` alone (the one write that
        does), so a step stuck for an hour under a live lease still shows its age.
        Of two claims of one unowned attempt in one call, exactly one wins.

        A worker process's heartbeat makes this one call per beat for every lease
        the process holds, so stores should do it in one round trip; this default
        makes one request per lease.
        """
        lost: list[Lease] = []
        for lease in leases:
            try:
                write = self.update_step(
                    lease.saga_id,
                    lease.index,
                    {"lease_owner": lease.owner, "lease_expires_at": expires_at},
                    expect=lease.expect(),
                )
            except KeyError:
                lost.append(lease)
                continue
            if not write.applied:
                lost.append(lease)
        return lost

    def take_over(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        attempt: int,
        now: float,
        compensation: bool = False,
    ) -> StepWrite:
        """Take over a step's current attempt whose lease is free, by compare-and-set.

        Applies `changes` (typically a new attempt, no owner, a new ``sent_at``) only
        if the step is still at `attempt` (its compensation attempt, with
        `compensation`) and in the forward (or compensating) part, and its lease is
        free at `now`: no owner, or expired by then. A lease renewed meanwhile, or
        claimed by a worker that just started the attempt, refuses the takeover.
        """
        if compensation:
            expect = StepExpect(status=_COMPENSATING_ONLY, comp_attempt=attempt, lease_free_at=now)
        else:
            expect = StepExpect(status=_FORWARD_STEP, attempt=attempt, lease_free_at=now)
        return self.update_step(saga_id, index, changes, expect=expect)

    @abc.abstractmethod
    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        """Create or update the late-success entry of `attempt` in step `index`'s ``late``.

        Entries live in the step's ``late`` field, a JSON object keyed by the attempt
        number as a string. With `expect_state` None the entry must not exist yet
        and is created from `changes`; otherwise the entry's ``state`` must equal
        `expect_state` and `changes` are merged into it. Atomic: of concurrent
        writers with the same expectation, exactly one applies. The returned
        `StepWrite` reports the step's status and attempt and the saga's status;
        an unknown saga or step raises KeyError.
        """

    # -- listing and housekeeping -----------------------------------------------
    @abc.abstractmethod
    def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        created_before: float | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent_id: str | None = None,
    ) -> Page:
        """Executions newest first, filtered, from an index; resume with `cursor`.

        Filters combine: `status`, `name`, creation time, and `parent_id` (only the
        children of that execution: those created with ``parent_id`` set to it, the
        child sagas of its steps). Each filter is served by an index of the store.
        """

    @abc.abstractmethod
    def delete(self, saga_id: str) -> bool:
        """Delete a finished execution; False if absent. Refuses an unfinished one."""

    @abc.abstractmethod
    def purge(self, finished_before: float) -> int:
        """Delete finished executions that finished before the cutoff; return how many."""

    # -- waiting -----------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Block until the execution is terminal and return it; None on timeout.

        This default polls with a bounded interval; stores with notifications
        (Redis, PostgreSQL) override it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.poll_interval
        while True:
            if self.get_status(saga_id) in TERMINAL_STATUSES:  # cheap polls, one full read
                execution = self.get(saga_id)
                if execution is not None and execution.status in TERMINAL_STATUSES:
                    return execution
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                time.sleep(min(interval, left))
            else:
                time.sleep(interval)
            interval = min(interval * 1.5, 0.5)

    def wait_outcome(self, saga_id: str, timeout: float | None = None) -> Outcome | None:
        """Block until the execution is terminal and return how it ended; None on timeout.

        What ``SagaResult.get()`` calls: a store whose announcement of the end carries
        the status and the output (Redis) answers a COMPLETED saga without reading it.
        This default is `wait`, the execution read in full.
        """
        execution = self.wait(saga_id, timeout)
        return None if execution is None else Outcome.of(execution)

    async def async_wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """`wait` for asyncio: await a terminal status without blocking the event loop.

        This default polls, each read in a worker thread and each pause an
        `asyncio.sleep` (`celery_saga.backends.waiting.poll_terminal`). Stores with
        notifications override it with a listener shared by the loop's waiters
        (`celery_saga.backends.waiting.Notifications`), never with a blocking `wait`
        in a thread: a thread per waiter would exhaust the loop's executor.
        """
        from celery_saga.backends.waiting import poll_terminal

        return await poll_terminal(self, saga_id, timeout)

    def close(self) -> None:
        """Release connections. The store may not be used afterwards."""

    # -- compatibility with celery-saga 0.1 ----------------------------------------------
    def load(self, saga_id: str) -> SagaExecution | None:
        """Alias of `get` (the name celery-saga 0.1 used)."""
        return self.get(saga_id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
