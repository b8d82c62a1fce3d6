"""Child sagas: a step carried out by another saga's execution.

Reaching the step records the child's id on it (derived from the parent's id and
the step, so a recovered or redelivered parent never makes a second child) and
starts the child with the parent link and the idempotency key ``<parent>/<step>``.
When the child ends, the parent's step takes its outcome: COMPLETED is the step's
success with the child's output; COMPENSATED, CANCELLED or FAILED is the step's
failure (the child already undid itself, so the step needs no compensation).
When the parent compensates a completed child, the child is reverted as a whole,
and its end (REVERTED, or FAILED) is the step's compensation outcome. If a hand-off
is lost, the parent's recovery looks at the child and catches up.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery_saga import registry
from celery_saga.backends.base import StepExpect
from celery_saga.errors import SagaError
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepRecord, StepStatus, now
from celery_saga.runtime import driver, hooks, messages, start
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.compensation import cancel
from celery_saga.runtime.decide import FORWARD
from celery_saga.runtime.log import log

CHILD = StepKind.SAGA.value
_NAMESPACE = uuid.UUID("6f1c2b0e-5d7a-4e43-9a51-0c8f3e2d7b19")
_COMPENSATING = frozenset({StepStatus.COMPENSATING})
_RUNNING = frozenset({SagaStatus.RUNNING})
#: A child's statuses that end the parent's step (forward) or its compensation.
_FAILED_ENDS = (SagaStatus.COMPENSATED, SagaStatus.CANCELLED, SagaStatus.FAILED)


def child_id(parent_id: str, index: int) -> str:
    """The id of the child execution of step `index` of `parent_id` (always the same)."""
    return str(uuid.uuid5(_NAMESPACE, f"{parent_id}/{index}"))


def _child_runtime(rt: Runtime, index: int) -> Runtime:
    child = rt.definition.step(index).child
    if child is None:
        raise SagaError(f"step {index} of saga {rt.definition.name!r} is not a child saga")
    child_rt = Runtime.of(child)
    # The child is kept where its parent is, whatever store its own saga names.
    return Runtime(child_rt.saga, child_rt.definition, rt.backend)


def begin(
    rt: Runtime, execution: SagaExecution, index: int, attempt: int, input: dict[str, Any]
) -> None:
    """Reach child step `index`: link the child's id to it, then start the child."""
    cid = child_id(execution.saga_id, index)
    write = rt.backend.update_step(
        execution.saga_id,
        index,
        {
            "status": StepStatus.RUNNING,
            "attempt": attempt,
            "child_id": cid,
            "started_at": now(),
            "sent_at": None,
            "lease_owner": None,
            "lease_expires_at": None,
        },
        expect=StepExpect(status=FORWARD, attempt_at_most=attempt, saga_status=_RUNNING),
    )
    if not write.applied:
        if write.status in FORWARD and write.saga_status is not SagaStatus.RUNNING:
            driver.finish(
                rt, execution.saga_id, index, attempt, StepStatus.SKIPPED,
                {"error": "not started: the saga stopped before this child saga started"},
            )  # fmt: skip
        return
    _start(rt, execution.saga_id, index, input, execution.queue)


def _start(
    rt: Runtime, parent_id: str, index: int, input: dict[str, Any], queue: str | None
) -> None:
    start.start_runtime(
        _child_runtime(rt, index),
        input,
        idempotency_key=f"{parent_id}/{index}",
        queue=queue,
        saga_id=child_id(parent_id, index),
        parent=(parent_id, index),
    )


def undo(rt: Runtime, execution: SagaExecution, record: StepRecord) -> None:
    """Compensate a completed child step: revert the child as a whole."""
    write = rt.backend.update_step(
        execution.saga_id,
        record.index,
        {
            "status": StepStatus.COMPENSATING,
            "comp_attempt": record.comp_attempt + 1,
            "comp_started_at": now(),
            "lease_owner": None,
            "lease_expires_at": None,
            "sent_at": None,
            "sends": 0,
        },
        expect=StepExpect(status=frozenset({record.status}), comp_attempt=record.comp_attempt),
    )
    if write.applied:
        _revert(rt, execution, record)


def _revert(rt: Runtime, execution: SagaExecution, record: StepRecord) -> None:
    """Ask the child to revert; if it already ended so, take that as the outcome."""
    cid = record.child_id or child_id(execution.saga_id, record.index)
    child_rt = _child_runtime(rt, record.index)
    reason = f"parent saga {execution.saga_name} {execution.saga_id} is compensating"
    if driver.revert(child_rt, cid, reason):
        return
    child = rt.backend.get(cid)
    if child is not None and child.status in (SagaStatus.REVERTED, SagaStatus.FAILED):
        _compensation_outcome(rt, execution.saga_id, record.index, child)


def ended(child_rt: Runtime, child: SagaExecution, status: SagaStatus, output: Any) -> None:
    """A child execution ended: its parent's step takes the outcome."""
    if child.parent_id is None or child.parent_step is None:
        return
    parent = child_rt.backend.get(child.parent_id)
    if parent is None:
        log(logging.WARNING, child.saga_id, None, "its parent %s is gone", child.parent_id)
        return
    rt = Runtime.of(registry.lookup(parent.saga_name, child_rt.app))
    rt = Runtime(rt.saga, rt.definition, child_rt.backend)
    child.status = status
    child.output = output if status is SagaStatus.COMPLETED else child.output
    take_outcome(rt, parent, child.parent_step, child)


def take_outcome(rt: Runtime, parent: SagaExecution, index: int, child: SagaExecution) -> bool:
    """Apply an ended child's outcome to its parent's step; True if it changed something."""
    record = parent.step(index)
    if record.status is StepStatus.COMPENSATING:
        return _compensation_outcome(rt, parent.saga_id, index, child)
    if record.status not in FORWARD:
        return False
    name = rt.definition.step(index).task_name
    if child.status is SagaStatus.COMPLETED:
        output = child.output if isinstance(child.output, dict) else {"result": child.output}
        write = driver.finish(
            rt,
            parent.saga_id,
            index,
            record.attempt,
            StepStatus.SUCCESS,
            {"output": output, "compensation_data": {"child_id": child.saga_id}},
        )
        return write.applied
    if child.status in _FAILED_ENDS:
        error = (
            f"child saga {name} {child.saga_id} ended {child.status.value}: "
            f"{child.error or 'no error recorded'}"
        )
        write = driver.finish(
            rt, parent.saga_id, index, record.attempt, StepStatus.FAILED, {"error": error},
            failing=True,
        )  # fmt: skip
        return write.applied
    return False


def _compensation_outcome(rt: Runtime, parent_id: str, index: int, child: SagaExecution) -> bool:
    if child.status is SagaStatus.REVERTED:
        changes: dict[str, Any] = {"status": StepStatus.COMPENSATED, "comp_finished_at": now()}
    elif child.status is SagaStatus.FAILED:
        changes = {
            "status": StepStatus.COMPENSATION_FAILED,
            "comp_finished_at": now(),
            "comp_error": f"child saga {child.saga_id} could not be reverted: {child.error}",
        }
    else:
        return False
    write = rt.backend.update_step(
        parent_id, index, changes, expect=StepExpect(status=_COMPENSATING)
    )
    if write.applied:
        driver.compensate_next(rt, parent_id)
    return write.applied


def catch_up(rt: Runtime, execution: SagaExecution, indexes: tuple[int, ...]) -> bool:
    """Recovery of a parent: start children that are missing, take the outcomes of ended
    ones, revert completed ones whose compensation began; True if anything moved."""
    moved = False
    for index in indexes:
        record = execution.step(index)
        cid = record.child_id or child_id(execution.saga_id, index)
        child = rt.backend.get(cid)
        if child is None:
            if record.status is StepStatus.RUNNING:
                kwargs, failures = messages.inputs(rt, execution, record.stage, [index])
                if index in failures:
                    driver.fail_unstartable(
                        rt, execution.saga_id, index, record.attempt, failures[index]
                    )
                else:
                    _start(rt, execution.saga_id, index, kwargs[index], execution.queue)
                moved = True
            continue
        if child.status.is_terminal and take_outcome(rt, execution, index, child):
            moved = True
        elif record.status is StepStatus.COMPENSATING and child.status is SagaStatus.COMPLETED:
            _revert(rt, execution, record)
            moved = True
    return moved


def cancel_children(rt: Runtime, saga_id: str, reason: str | None) -> None:
    """Cancel the running children of a cancelled parent (each compensates itself)."""
    execution = rt.backend.get(saga_id)
    if execution is None:
        return
    for record in execution.steps:
        if record.kind == CHILD and record.child_id and record.status is StepStatus.RUNNING:
            child = rt.backend.get(record.child_id)
            if child is not None and not child.status.is_terminal:
                child_rt = _child_runtime(rt, record.index)
                cancel(
                    child_rt,
                    child.saga_id,
                    f"parent {execution.saga_id} cancelled" + (f": {reason}" if reason else ""),
                )


hooks.on_start(CHILD, begin)
hooks.on_undo(CHILD, undo)
hooks.on_end(ended)
hooks.on_cancel(cancel_children)
