"""What an operator (or the CLI) asks of an execution: retry or resolve compensations, revert."""

from __future__ import annotations

import logging

from celery_saga.backends.base import StepExpect
from celery_saga.errors import SagaError
from celery_saga.models import SagaStatus, StepStatus, now
from celery_saga.runtime import driver, history
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.log import log
from celery_saga.runtime.resume import resume

_COMPENSATION_FAILED = frozenset({StepStatus.COMPENSATION_FAILED})


def retry_compensations(rt: Runtime, saga_id: str) -> bool:
    """An operator's retry: a FAILED saga's failed compensations run again (fresh budget).

    The failed steps go back to the outcome they had before compensation, the
    saga to COMPENSATING, and compensation resumes in reverse completion order.
    Each retried step's last error stays in its record until it succeeds; its failed
    attempt goes to the step's history ("failed").
    """
    execution = rt.backend.get(saga_id)
    if execution is None:
        return False
    if execution.status is SagaStatus.FAILED:
        for record in execution.steps:
            if record.status is StepStatus.COMPENSATION_FAILED:
                rt.backend.update_step(
                    saga_id,
                    record.index,
                    {
                        "status": StepStatus.FAILED if record.error else StepStatus.SUCCESS,
                        "comp_worker": None,
                        "history": history.compensation_over(
                            record, "failed", record.comp_error, finished_at=record.comp_finished_at
                        ),
                    },
                    expect=StepExpect(status=_COMPENSATION_FAILED),
                )
        if not rt.backend.update_saga(
            saga_id,
            {"status": SagaStatus.COMPENSATING, "finished_at": None},
            expect_status={SagaStatus.FAILED},
        ):
            return False
        log(logging.WARNING, saga_id, None, "compensation retried by an operator")
        driver.compensate_next(rt, saga_id)
        return True
    if execution.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.PENDING):
        return resume(rt, execution).acted
    return False


def resolve_compensation(rt: Runtime, saga_id: str, index: int, note: str) -> bool:
    """An operator undid a step by hand: record it, and finish the saga if nothing is left."""
    execution = rt.backend.get(saga_id)
    if execution is None:
        return False
    record = execution.step(index)
    write = rt.backend.update_step(
        saga_id,
        index,
        {
            "status": StepStatus.COMPENSATED,
            "comp_finished_at": now(),
            "comp_error": f"resolved by hand: {note} (last error: {record.comp_error})",
        },
        expect=StepExpect(status=_COMPENSATION_FAILED),
    )
    if not write.applied:
        return False
    log(logging.WARNING, saga_id, index, "compensation resolved by hand: %s", note)
    execution = rt.backend.get(saga_id)
    if (
        execution is not None
        and execution.status is SagaStatus.FAILED
        and not any(s.status is StepStatus.COMPENSATION_FAILED for s in execution.steps)
    ):
        final = SagaStatus.CANCELLED if execution.cancelled_at else SagaStatus.COMPENSATED
        final = SagaStatus.REVERTED if execution.revert_reason is not None else final
        rt.backend.update_saga(saga_id, {"status": final}, expect_status={SagaStatus.FAILED})
    return True


def revert(rt: Runtime, saga_id: str, reason: str | None = None) -> None:
    """Revert a COMPLETED saga: compensate its steps in reverse order; it ends REVERTED.

    Anything but a COMPLETED saga is refused with a `SagaError` that gives its status.
    """
    why = reason or "reverted on request"
    if driver.revert(rt, saga_id, why):
        return
    execution = rt.backend.get(saga_id)
    if execution is None:
        raise LookupError(f"saga {saga_id} does not exist in {rt.backend!r}")
    raise SagaError(
        f"saga {execution.saga_name} {saga_id} is {execution.status.value}: only a COMPLETED "
        "saga can be reverted"
        + (" (it is being reverted already)" if execution.revert_reason is not None else "")
    )
