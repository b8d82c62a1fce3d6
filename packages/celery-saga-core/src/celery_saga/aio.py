"""The asyncio client: start sagas, await their outcome and follow their progress.

``await saga.arun(**input)``, ``await result.aget(timeout=...)`` and ``async for
update in result.watch()`` never block the event loop: starting a saga writes to
the store and sends a broker message, which are synchronous calls, so they run in
a worker thread (`celery_saga.offload`: the loop's default executor, a few calls at a
time per loop, so threads do not starve the loop of the GIL); waiting is the
store's `SagaBackend.async_wait` (a notification on Redis and PostgreSQL, one
listener per loop for all waiters; bounded polling in a thread elsewhere).

This module holds what the client needs beyond `SagaResult`: `arun`, `watch` and
the `SagaUpdate` it yields. The stores' side is `celery_saga.backends.waiting`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus, StepRecord, StepStatus
from celery_saga.offload import run_blocking, set_limit

if TYPE_CHECKING:
    from celery_saga.backends.base import SagaBackend

__all__ = ["SagaUpdate", "arun", "set_thread_limit", "watch"]

#: How many blocking calls (store reads, starts) run at once per event loop
#: (`celery_saga.offload.set_limit`; default 4).
set_thread_limit = set_limit


class _Handle(Protocol):
    """What `watch` reads of a `SagaResult` (this module does not import the client)."""

    @property
    def saga_id(self) -> str: ...

    @property
    def backend(self) -> SagaBackend: ...


async def arun(
    saga: Any, *, idempotency_key: str | None = None, queue: str | None = None, **input: Any
) -> Any:
    """`Saga.arun` as a function: start an execution of `saga`, return its `SagaResult`.

    The store write and the broker send run in a worker thread. Cancelling the
    awaiting task does not undo a start already under way: give an
    `idempotency_key` to find that execution again (a second `arun` with the same
    key returns it).
    """
    return await saga.arun(idempotency_key=idempotency_key, queue=queue, **input)


@dataclass(frozen=True)
class SagaUpdate:
    """One change seen on an execution: a step's status (or attempt), or the saga's status.

    `step` is the step that changed, as read (None for a change of the saga's own
    status); `status` is the saga's status in that read; `execution` is the whole
    record read, shared by the updates of one read.
    """

    saga_id: str
    status: SagaStatus
    step: StepRecord | None = None
    execution: SagaExecution | None = field(default=None, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        """True for the last update of `watch`: the saga reached a terminal status."""
        return self.step is None and self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data for a progress stream (no step output: it may be large or private)."""
        step = self.step
        return {
            "saga_id": self.saga_id,
            "status": self.status.value,
            "step": None
            if step is None
            else {
                "index": step.index,
                "task_name": step.task_name,
                "kind": step.kind,
                "status": step.status.value,
                "attempt": step.attempt,
                "error": step.error,
                "compensation_error": step.comp_error,
            },
        }


#: What makes a step "changed" for `watch`: its status and its attempts.
_StepState = tuple[StepStatus, int, int]
_UNTOUCHED: _StepState = (StepStatus.PENDING, 0, 0)


def _state(record: StepRecord) -> _StepState:
    return (record.status, record.attempt, record.comp_attempt)


def _changed_at(record: StepRecord) -> float:
    """When the step last changed, as far as its record says (for ordering one read)."""
    times = (record.started_at, record.finished_at, record.comp_started_at, record.comp_finished_at)
    return max((t for t in times if t is not None), default=0.0)


def _updates(
    execution: SagaExecution, seen: dict[int, _StepState], last: SagaStatus | None
) -> list[SagaUpdate]:
    """The updates between the previous read (`seen`, `last`) and `execution`; updates `seen`.

    Steps that changed come oldest change first. The first read of a saga still
    active starts with its status (what the steps that follow are part of); otherwise
    the saga's status, if it changed, comes after the steps, so a terminal status is
    always the last update.
    """
    changed: list[StepRecord] = []
    for record in execution.steps:
        state = _state(record)
        before = seen.get(record.index, _UNTOUCHED)
        seen[record.index] = state
        if state != before:
            changed.append(record)
    changed.sort(key=lambda r: (_changed_at(r), r.index))
    sid, status = execution.saga_id, execution.status
    steps = [SagaUpdate(sid, status, record, execution) for record in changed]
    saga = [SagaUpdate(sid, status, None, execution)] if status is not last else []
    return saga + steps if last is None and status not in TERMINAL_STATUSES else steps + saga


async def watch(result: _Handle, *, interval: float = 0.25) -> AsyncIterator[SagaUpdate]:
    """Follow an execution: yield a `SagaUpdate` per change, end after a terminal status.

    Stores announce only the end of a saga, so steps are followed by reading the
    execution every `interval` seconds (in a thread); on a store that announces
    endings (Redis, PostgreSQL) the last read happens as soon as the saga ends. A
    step that changes twice between two reads is reported once, in its later state
    (a short step may be seen SUCCESS without RUNNING before it). Raises
    `LookupError` if the execution does not exist (or is deleted while followed).
    """
    if not interval > 0:
        raise ValueError(
            f"watch(interval=...) must be a positive number of seconds, got {interval}"
        )
    from celery_saga.backends.base import SagaBackend

    store, saga_id = result.backend, result.saga_id
    notifies = type(store).async_wait is not SagaBackend.async_wait
    seen: dict[int, _StepState] = {}
    last: SagaStatus | None = None
    ending: asyncio.Task[SagaExecution | None] | None = None
    ended: SagaExecution | None = None
    try:
        while True:
            execution = ended or await run_blocking(store.get, saga_id)
            if execution is None:
                gone = "does not exist" if last is None else "was deleted while watched"
                raise LookupError(f"saga {saga_id} {gone} in {store!r}")
            for update in _updates(execution, seen, last):
                yield update
            last = execution.status
            if last in TERMINAL_STATUSES:
                return
            if not notifies:
                await asyncio.sleep(interval)
                continue
            if ending is None:
                ending = asyncio.ensure_future(store.async_wait(saga_id))
            done, _ = await asyncio.wait({ending}, timeout=interval)
            if done:
                ended = ending.result()
    finally:
        if ending is not None and not ending.done():
            ending.cancel()
