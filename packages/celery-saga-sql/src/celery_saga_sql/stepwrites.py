"""What one step write asks of the store: `StepRequest`, and `StartPlan` for the next stage.

The runtime's `update_step` / `update_step_and_get` arguments, encoded once as column
values, with the decisions every dialect shares: which step rows the write needs, and
whether the next stage may start given their locked state (`StepRequest.may_start`, the
same rule as `SagaBackend.update_step_and_get`'s default).

A stage of one step is counted without its counter row (`StepRequest.alone`): the write
that completes it says so (``StartNext.check`` is that step alone and ``get_at`` is 1),
and it is that stage's only write that counts (the others the step could get are
refused once it has left PENDING and RUNNING), so its count is 1: a sequential saga's
step writes no counter row, as on the Redis store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from celery_saga.backends.base import StartNext, StepExpect, payload_size
from celery_saga.models import SagaStatus, StepStatus
from celery_saga_sql.codec import step_values

_SUCCESS = StepStatus.SUCCESS.value
_PENDING = StepStatus.PENDING.value
_RUNNING = SagaStatus.RUNNING.value


@dataclass(frozen=True)
class StartPlan:
    """`StartNext` as column values: steps to mark started when the stage completes."""

    check: tuple[int, ...]
    start: tuple[int, ...]
    values: Mapping[int, Mapping[str, Any]]

    @property
    def fields(self) -> tuple[tuple[str, ...], ...]:
        """The fields each started step gets, in `start` order (part of a statement's shape)."""
        return tuple(tuple(sorted(self.values[i])) for i in self.start)


@dataclass(frozen=True)
class StepRequest:
    """One step write: compare-and-set, counter, and the next stage's start."""

    saga_id: str
    index: int
    values: Mapping[str, Any]
    expect: StepExpect | None = None
    count_in: str | None = None
    get_at: int | None = None
    start: StartPlan | None = None
    #: The execution's changes as column values (`saga_values`), written with the step if
    #: its write applies and the saga is RUNNING: the saga's end (`update_step_and_finish`).
    finish: Mapping[str, Any] | None = None
    #: The write completes a stage of this step alone: counted 1, with no counter row.
    alone: bool = False

    @classmethod
    def of(
        cls,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        expect: StepExpect | None,
        count_in: str | None,
        get_at: int | None = None,
        start_next: StartNext | None = None,
    ) -> StepRequest:
        """The request for `changes` (checked), with the start it can lead to, if any."""
        values = step_values(changes)
        alone = (
            count_in is not None
            and start_next is not None
            and start_next.counts_alone(index, get_at)
        )
        if alone:
            values["seq"] = 1  # the count a counter row would give
        plan = None
        start = () if start_next is None else tuple(i for i in start_next.start if i != index)
        if start_next is not None and start and count_in is not None and get_at is not None:
            written = values.get("status")
            if index not in start_next.check or written in (None, _SUCCESS):
                plan = StartPlan(
                    tuple(start_next.check),
                    start,
                    {i: step_values(start_next.changes[i]) for i in start},
                )
        return cls(saga_id, index, values, expect, count_in, get_at, plan, alone=alone)

    @classmethod
    def finishing(
        cls,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        expect: StepExpect | None,
        count_in: str | None,
        finish: Mapping[str, Any],
    ) -> StepRequest:
        """The last step's write with the saga's end: its stage is that step alone (the
        runtime ends a saga with its last step only then), so a count is 1."""
        alone = None if count_in is None else StartNext.alone(index)
        request = cls.of(saga_id, index, changes, expect, count_in, 1, alone)
        return replace(request, finish=finish)

    @property
    def counter(self) -> str | None:
        """The counter row the write bumps: `count_in`, except for a stage of one step."""
        return None if self.alone else self.count_in

    def count_after(self, stored: Any) -> int | None:
        """The write's count given the counter's `stored` value (None: no row yet)."""
        if self.count_in is None:
            return None
        return 1 if self.alone else int(stored or 0) + 1

    @property
    def indexes(self) -> tuple[int, ...]:
        """The step rows the write locks: the step, then the others `start` looks at."""
        if self.start is None:
            return (self.index,)
        extra = [*self.start.check, *self.start.start]
        return (self.index, *dict.fromkeys(i for i in extra if i != self.index))

    def may_start(self, found: Mapping[int, Any], count: int | None) -> tuple[int, ...]:
        """The steps to mark started, decided from the locked state `found` (by index):
        the counter reached `get_at`, the saga runs, every step of ``check`` succeeded
        (the written one with its new status) and each started one is PENDING at attempt 0."""
        plan = self.start
        if plan is None or count is None or count != self.get_at:
            return ()
        if found[self.index].saga_status != _RUNNING:
            return ()
        for i in plan.check:
            row = found.get(i)
            status = self.values.get("status") if i == self.index else None
            if row is None or (status or row.status) != _SUCCESS:
                return ()
        return tuple(
            i
            for i in plan.start
            if i in found and found[i].status == _PENDING and int(found[i].attempt) == 0
        )

    def written(self, stamp: float, count: int | None) -> int:
        """The payload bytes the write sends (for `StoreStats`)."""
        size = payload_size(*self.values, *self.values.values(), "updated_at", stamp)
        if count is not None and self.counter is not None:
            size += payload_size(self.saga_id, self.counter, 1)
        if self.start is not None:
            for values in self.start.values.values():
                size += payload_size(*values, *values.values())
        if self.finish is not None:
            size += payload_size(*self.finish, *self.finish.values())
        return size

    def finishes(self, saga_status: str) -> bool:
        """Whether the saga's end is written with the step: asked for, and the saga runs."""
        return self.finish is not None and saga_status == _RUNNING


def start_params(plan: StartPlan, started: Sequence[int]) -> dict[str, Any]:
    """Bound values of the started steps: ``s<j>`` their index, ``n<j>_<field>`` values."""
    params: dict[str, Any] = {}
    for j, index in enumerate(started):
        params[f"s{j}"] = index
        for name, value in plan.values[index].items():
            params[f"n{j}_{name}"] = value
    return params
