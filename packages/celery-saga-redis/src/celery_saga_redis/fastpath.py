"""The fast step write: when a step write can take STEP_FAST or FINISH_FAST, its ARGV,
and its reply as the `StepWrite` of the store contract.

Most writes of a saga are its steps' ends: a step of a stage of its own succeeds and
starts the next stage's one step, or fails. The fast scripts (`step_scripts`) do that
write with exact conditions (the saga's status, each step's head) and fewer arguments;
`plan` says whether a write has that shape (a pure function of its arguments), and a
fast script that finds the stored state other than planned writes nothing, so the
caller runs UPDATE_STEP or FINISH_STEP, which decide every case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_saga.backends.base import StartNext, StepExpect, StepWrite, plain_value
from celery_saga.models import SagaStatus, StepStatus, now
from celery_saga_redis import layout, stepcalls

_RUNNING = SagaStatus.RUNNING.value
_SUCCESS = StepStatus.SUCCESS.value
#: The state of a step the next stage starts: PENDING at attempt 0.
_NOT_STARTED = (StepStatus.PENDING.value, 0)


#: The values of one step in the fast ARGV, and the positions among them of what the
#: write stores (the new head, started_at, the other members).
_BLOCK = 6
_WRITTEN = (2, 3, 4)
#: Where each step's block starts in the fast ARGV (after now and the saga's status).
_BLOCK_STARTS = (2, 2 + _BLOCK)


@dataclass(frozen=True)
class FastWrite:
    """A step write planned for a fast script: its ARGV (`args`), the state it expects
    the step in, and what the write counts and starts when it applies."""

    args: list[Any]
    status: str
    attempt: int
    count: int | None
    started: tuple[int, ...]

    def write(self, reply: list[Any], changes: Mapping[str, Any]) -> StepWrite:
        """The StepWrite of an applied fast script's reply (not 0)."""
        _, saga, owner, expires = reply[:4]
        stored = [1, self.status, self.attempt, 0, saga, owner, expires]
        return stepcalls.step_write(stored, changes, count=self.count, started=self.started)

    @property
    def size(self) -> int:
        """The bytes the write stores (the store's statistics): each step's new head and
        members, not the conditions (what the general call counts too)."""
        args = self.args
        return sum(
            len(str(args[start + n]))
            for start in _BLOCK_STARTS[: 2 if self.started else 1]
            for n in _WRITTEN
        )


def _expected(e: StepExpect) -> tuple[str, int] | None:
    """The status and attempt a step must have for `e` to hold, when one state says it:
    a step being ended is expected RUNNING at its attempt."""
    if e.comp_attempt is not None or e.comp_attempt_at_most is not None:
        return None
    if e.lease_free_at is not None or e.lease_owners is not None or e.status is None:
        return None
    attempt = e.attempt if e.attempt is not None else e.attempt_at_most
    if attempt is None or (e.attempt_at_most is not None and attempt > e.attempt_at_most):
        return None
    allowed = {plain_value(s) for s in e.status}
    if StepStatus.RUNNING.value in allowed:
        return StepStatus.RUNNING.value, attempt
    if allowed == {StepStatus.PENDING.value}:
        return StepStatus.PENDING.value, attempt
    return None


def _block(
    saga_id: str, index: int, changes: Mapping[str, Any], state: tuple[str, int]
) -> list[Any] | None:
    """One step's 6 values of the fast ARGV (`step_scripts.STEP_FAST`); None if the write
    sets a field apart, comp_attempt or more than one member to null."""
    step = layout.StepChanges(saga_id, index, changes)
    status, attempt, comp_attempt = step.head
    nulls = step.nulls.split()
    if step.apart or step.deleted or comp_attempt != "" or len(nulls) > 1:
        return None
    new = (status or state[0], state[1] if attempt == "" else int(attempt))
    head, new_head = layout.step_head(*state, 0), layout.step_head(*new, 0)
    started, others = step.members[: step.started], step.members[step.started :]
    null = layout.member_start(nulls[0]) if nulls else ""
    return [index, head, new_head, started, others, null]


def plan(
    saga_id: str,
    index: int,
    changes: Mapping[str, Any],
    e: StepExpect,
    count_in: str | None,
    get_at: int | None,
    read: bool,
    start_next: StartNext | None,
) -> FastWrite | None:
    """The fast form of a step write (`SagaBackend.update_step_and_get`'s arguments), or
    None when it has another shape."""
    state = _expected(e)
    if state is None:
        return None
    if e.saga_status is not None and _RUNNING not in {plain_value(s) for s in e.saga_status}:
        return None
    count: int | None = None
    if count_in is not None or get_at is not None:
        # Counted as a stage of this step alone: its count is 1, with no counter written.
        if count_in is None or start_next is None or not start_next.counts_alone(index, get_at):
            return None
        if read:
            return None
        count = 1
    block = _block(saga_id, index, changes, state)
    if block is None:
        return None
    if count is not None:
        block[4] += ',"q":1'
    started: tuple[int, ...] = ()
    needs_running = e.saga_status is not None
    succeeded = plain_value(changes.get("status", state[0])) == _SUCCESS
    if start_next is not None and start_next.start and succeeded:
        if len(start_next.start) != 1:
            return None
        (nxt,) = start_next.start
        second = _block(saga_id, nxt, start_next.changes.get(nxt, {}), _NOT_STARTED)
        if second is None:
            return None
        block += second
        started, needs_running = (nxt,), True
    saga = f'"{_RUNNING}"' if needs_running else ""
    return FastWrite([layout.dumps(now()), saga, *block], *state, count, started)
