"""What a store's writes take and report: the conditions of a step write (`StepExpect`),
its outcome (`StepWrite`), a step's lease (`Lease`), the next stage's start
(`StartNext`), a page of a listing (`Page`) and the store's counters (`StoreStats`).

Plain values, shared by every store and by the runtime; `celery_saga.backends.base`
re-exports them beside the contract (`SagaBackend`) that uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_saga.backends.helpers import encode_cursor
from celery_saga.models import SagaExecution, SagaStatus, SagaSummary, StepStatus

_RUNNING_STEP = frozenset({StepStatus.RUNNING})
_COMPENSATING_ONLY = frozenset({StepStatus.COMPENSATING})


@dataclass(frozen=True)
class StepExpect:
    """Conditions a step write requires; any unmet condition refuses the write.

    `attempt` must equal the stored attempt, `attempt_at_most` must not be below it
    (this is how a write from an older, fenced attempt is refused), and the
    execution's status must be one of `saga_status`. Leases: with `lease_free_at`,
    the step's lease must be free at that time (no owner, or expired by then) or held
    by `lease_holder`; with `lease_owners`, the stored owner must be one of them
    (``None`` in it stands for "no owner").
    """

    status: frozenset[StepStatus] | None = None
    attempt: int | None = None
    attempt_at_most: int | None = None
    saga_status: frozenset[SagaStatus] | None = None
    comp_attempt: int | None = None
    comp_attempt_at_most: int | None = None
    lease_free_at: float | None = None
    lease_holder: str | None = None
    lease_owners: tuple[str | None, ...] | None = None

    def refusal(
        self,
        status: StepStatus,
        attempt: int,
        comp_attempt: int,
        saga_status: SagaStatus,
        lease_owner: str | None = None,
        lease_expires_at: float | None = None,
    ) -> str | None:
        """Why a step in this state may not be written, or None if it may.

        Stores that evaluate conditions in Python share this; stores that check them
        server side (Lua, SQL) must agree with it, and the conformance suite checks that.
        """
        if self.status is not None and status not in self.status:
            return f"step status is {status.value}"
        if self.attempt is not None and attempt != self.attempt:
            return f"step attempt is {attempt}, not {self.attempt}"
        if self.attempt_at_most is not None and attempt > self.attempt_at_most:
            return f"step attempt {attempt} is newer than {self.attempt_at_most}"
        if self.comp_attempt is not None and comp_attempt != self.comp_attempt:
            return f"compensation attempt is {comp_attempt}, not {self.comp_attempt}"
        if self.comp_attempt_at_most is not None and comp_attempt > self.comp_attempt_at_most:
            return f"compensation attempt {comp_attempt} is newer than {self.comp_attempt_at_most}"
        if self.saga_status is not None and saga_status not in self.saga_status:
            return f"saga status is {saga_status.value}"
        if (
            self.lease_free_at is not None
            and lease_owner is not None
            and lease_owner != self.lease_holder
            and (lease_expires_at is None or lease_expires_at > self.lease_free_at)
        ):
            return f"the lease is held by {lease_owner} until {lease_expires_at}"
        if self.lease_owners is not None and lease_owner not in self.lease_owners:
            return f"the lease is held by {lease_owner}"
        return None


@dataclass(frozen=True)
class StepWrite:
    """What a step write did, and the state it saw (after the write, if applied)."""

    applied: bool
    status: StepStatus
    attempt: int
    saga_status: SagaStatus
    count: int | None = None
    comp_attempt: int = 0
    started: tuple[int, ...] = ()
    lease_owner: str | None = None
    lease_expires_at: float | None = None


@dataclass(frozen=True)
class Outcome:
    """How an execution ended, as a wait for the end learned it (`SagaBackend.wait_outcome`).

    `output` is the saga's output when it COMPLETED. `execution` is the whole execution
    when the store read it; None when the store's announcement of the end said all a
    caller of ``get()`` needs (the status and the output), so nothing was read.
    """

    status: SagaStatus
    output: Any = None
    execution: SagaExecution | None = None

    @classmethod
    def of(cls, execution: SagaExecution) -> Outcome:
        """The outcome of an execution that was read (finished or not)."""
        return cls(execution.status, execution.output, execution)


@dataclass(frozen=True)
class Lease:
    """A lease a worker process holds on one attempt of a step or of its compensation.

    `owner` is ``host/pid/thread/task-id`` (at most 512 characters); `attempt` is the
    step's attempt (its compensation attempt when `compensation` is true). See
    `SagaBackend.renew_leases`.
    """

    saga_id: str
    index: int
    owner: str
    attempt: int
    compensation: bool = False

    def expect(self) -> StepExpect:
        """The conditions under which this lease is still (or may become) its owner's."""
        if self.compensation:
            return StepExpect(
                status=_COMPENSATING_ONLY,
                comp_attempt=self.attempt,
                lease_owners=(self.owner, None),
            )
        return StepExpect(
            status=_RUNNING_STEP, attempt=self.attempt, lease_owners=(self.owner, None)
        )


@dataclass
class StoreStats:
    """Counted, not timed: what a store did on the wire since the last reset.

    `round_trips` counts requests to the server (a pipeline or a transaction
    counts as one per network exchange); `bytes_written` counts the payload bytes
    of writes (field names and values as sent). The benchmark harness reads these
    to report per-step costs.
    """

    round_trips: int = 0
    bytes_written: int = 0

    def add(self, round_trips: int = 1, written: int = 0) -> None:
        """Record `round_trips` exchanges carrying `written` payload bytes."""
        self.round_trips += round_trips
        self.bytes_written += written

    def reset(self) -> None:
        """Start counting from zero."""
        self.round_trips = 0
        self.bytes_written = 0

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict."""
        return {"round_trips": self.round_trips, "bytes_written": self.bytes_written}


@dataclass(frozen=True)
class StartNext:
    """Steps to mark started in the write that completes a stage.

    `check`: steps that must all be SUCCESS; `start`: steps to move from PENDING
    (attempt 0) to ``changes[i]`` (RUNNING, attempt 1, their task id...).
    """

    check: tuple[int, ...]
    start: tuple[int, ...]
    changes: Mapping[int, Mapping[str, Any]]

    @classmethod
    def alone(cls, index: int) -> StartNext:
        """The stage of step `index` alone, starting nothing: how a store counts the write
        that ends a saga with its last step (`SagaBackend.update_step_and_finish`)."""
        return cls(check=(index,), start=(), changes={})

    def counts_alone(self, index: int, get_at: int | None) -> bool:
        """Whether step `index`'s write completing this stage at `get_at` may count 1
        without a counter: the stage is that step alone (see the store specification)."""
        return get_at == 1 and tuple(self.check) == (index,)

    def ready(self, execution: SagaExecution) -> bool:
        """Whether `execution` (read after the write) lets the next stage start."""
        return execution.status is SagaStatus.RUNNING and all(
            execution.step(i).status is StepStatus.SUCCESS for i in self.check
        )

    def apply(self, execution: SagaExecution, index: int) -> None:
        """Reflect step `index`'s start in an execution read before it."""
        record = execution.step(index)
        for name, value in self.changes[index].items():
            setattr(record, name, StepStatus(value) if name == "status" else value)


@dataclass(frozen=True)
class Page:
    """One page of a listing; pass `cursor` back to get the next one (None: no more)."""

    items: list[SagaSummary]
    cursor: str | None

    @classmethod
    def of(cls, summaries: Sequence[SagaSummary], limit: int) -> Page:
        """The first `limit` of `summaries` (newest first, read past a page's end to learn
        whether more follow), with a cursor after the last one when more do."""
        items = list(summaries[:limit])
        if len(summaries) <= limit:
            return cls(items, None)
        return cls(items, encode_cursor(items[-1].created_at, items[-1].saga_id))
