"""Compensations and turning back: a compensation's outcome, its retries, cancellation.

Compensations run one at a time in reverse completion order; each outcome is
recorded with a compare-and-set on the compensation's attempt, and the driver
sends the next one.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from celery_saga.backends.base import StepExpect
from celery_saga.config import setting
from celery_saga.headers import SagaHeader
from celery_saga.models import SagaExecution, SagaStatus, StepStatus, now
from celery_saga.runtime import driver, history, hooks, leases, messages
from celery_saga.runtime.binding import Runtime, describe_error
from celery_saga.runtime.decide import REFUSE, RUN, Admission
from celery_saga.runtime.log import log
from celery_saga.runtime.workers import worker_name

if TYPE_CHECKING:
    from celery import Celery


def compensation_started(rt: Runtime, header: SagaHeader, task_id: str | None) -> Admission:
    """Gate before a compensation's body runs: may this attempt run, now or later?

    Records it started under this process's lease. A copy of the attempt that
    another process runs under a live lease (a broker redelivery) waits for that
    lease to expire, so a compensation body never runs twice at the same time.
    """
    if header.late is not None:
        late = rt.backend.record_late(
            header.saga_id,
            header.index,
            header.late,
            {"comp_task_id": task_id or header.task_id, "comp_started_at": now()},
            expect_state="compensating",
        )
        return RUN if late.applied else REFUSE
    t = now()
    owner = leases.owner_of(task_id or header.task_id)
    write = rt.backend.update_step(
        header.saga_id,
        header.index,
        {
            "comp_task_id": task_id or header.task_id,
            "comp_started_at": t,
            "lease_owner": owner,
            "lease_expires_at": t + leases.lease_seconds(rt.app),
            "comp_worker": worker_name(),
        },
        expect=StepExpect(
            status=driver.COMPENSATING_STEP,
            comp_attempt=header.attempt,
            lease_free_at=t,
            lease_holder=owner,
        ),
    )
    if write.applied:
        return RUN
    expires = write.lease_expires_at
    if (
        write.status is StepStatus.COMPENSATING
        and write.comp_attempt == header.attempt
        and write.lease_owner not in (None, owner)
        and expires is not None
        and expires > t
    ):
        log(
            logging.INFO,
            header.saga_id,
            header.index,
            "compensation attempt %s runs elsewhere (%s): waiting for its lease",
            header.attempt,
            write.lease_owner,
        )
        return Admission(False, expires - t + 0.1)
    return REFUSE


def compensation_succeeded(rt: Runtime, header: SagaHeader) -> None:
    """Record a compensation as done and dispatch the next one."""
    if header.late is not None:
        write = rt.backend.record_late(
            header.saga_id,
            header.index,
            header.late,
            {"state": "compensated", "comp_finished_at": now(), "comp_error": None},
            expect_state="compensating",
        )
    else:
        write = rt.backend.update_step(
            header.saga_id,
            header.index,
            {
                "status": StepStatus.COMPENSATED,
                "comp_finished_at": now(),
                "comp_error": None,
                "comp_worker": worker_name(),
            },
            expect=StepExpect(status=driver.COMPENSATING_STEP, comp_attempt=header.attempt),
        )
    if write.applied:
        what = "compensated" if header.late is None else f"late attempt {header.late} undone"
        log(logging.INFO, header.saga_id, header.index, "%s", what)
        driver.compensate_next(rt, header.saga_id)


def compensation_failed(rt: Runtime, header: SagaHeader, error: str) -> None:
    """Retry a failed compensation with backoff, or record it failed and go on."""
    spec = rt.definition.step(header.index)
    policy = spec.compensation_retry
    max_retries = (
        policy.max_retries
        if policy is not None
        else int(setting(rt.app, "saga_compensation_max_retries"))
    )
    tries = header.attempt - (header.round_start or header.attempt) + 1
    if tries <= max_retries:
        delay = policy.delay(tries) if policy is not None else _backoff(rt.app, tries)
        execution = rt.backend.get(header.saga_id)  # its history, and what to send again
        if execution is None:
            raise KeyError(f"no saga {header.saga_id}")  # what the write would raise
        if not _record_retry(rt, header, error, delay, execution):
            return
        log(
            logging.WARNING,
            header.saga_id,
            header.index,
            "compensation attempt %s failed (%s); retrying in %.2fs",
            header.attempt,
            error,
            delay,
        )
        if header.late is not None:
            messages.send_late_compensation(
                rt, execution, header.index, header.late, header.attempt + 1, delay,
                round_start=header.round_start,
            )  # fmt: skip
            return
        messages.send_compensation(
            rt,
            execution,
            execution.step(header.index),
            header.attempt + 1,
            delay,
            round_start=header.round_start,
        )
        return
    failed = {"comp_error": error, "comp_finished_at": now()}
    if header.late is not None:
        write = rt.backend.record_late(
            header.saga_id,
            header.index,
            header.late,
            {**failed, "state": "compensation_failed"},
            expect_state="compensating",
        )
    else:
        write = rt.backend.update_step(
            header.saga_id,
            header.index,
            {**failed, "status": StepStatus.COMPENSATION_FAILED, "comp_worker": worker_name()},
            expect=StepExpect(status=driver.COMPENSATING_STEP, comp_attempt=header.attempt),
        )
    if write.applied:
        log(
            logging.ERROR,
            header.saga_id,
            header.index,
            "compensation failed for good after %s tries: %s",
            tries,
            error,
        )
        driver.compensate_next(rt, header.saga_id)


def _record_retry(
    rt: Runtime, header: SagaHeader, error: str, delay: float, execution: SagaExecution
) -> bool:
    """Move a failed compensation on to its next attempt (once); True if this call did.

    The failed attempt goes to the step's history (`execution` is the record read just
    before: the expectation on the compensation attempt keeps that history current).
    """
    if header.late is not None:
        return rt.backend.record_late(
            header.saga_id,
            header.index,
            header.late,
            {"comp_attempt": header.attempt + 1, "comp_error": error, "sent_at": now() + delay},
            expect_state="compensating",
        ).applied
    return rt.backend.update_step(
        header.saga_id,
        header.index,
        {
            **leases.fresh_lease(now() + delay),
            "comp_attempt": header.attempt + 1,
            "comp_error": error,
            "comp_worker": None,
            "history": history.compensation_over(
                execution.step(header.index),
                "failed",
                error,
                attempt=header.attempt,
                worker=worker_name(),
            ),
        },
        expect=StepExpect(status=driver.COMPENSATING_STEP, comp_attempt=header.attempt),
    ).applied


def _backoff(app: Celery, retry: int) -> float:
    """Exponential backoff with full jitter, capped (the compensation default)."""
    base = float(setting(app, "saga_compensation_retry_backoff"))
    cap = float(setting(app, "saga_compensation_retry_backoff_max"))
    return random.uniform(0, min(cap, base * 2 ** (retry - 1))) if base > 0 else 0.0


def cancel(rt: Runtime, saga_id: str, reason: str | None = None) -> bool:
    """Cancel a saga: no new step starts, running steps finish, done steps are compensated.

    Returns False if the saga was not RUNNING or PENDING (already finished or
    compensating). Its final status is CANCELLED (or FAILED if a compensation fails).
    """
    turned = rt.backend.update_saga(
        saga_id,
        {
            "status": SagaStatus.COMPENSATING,
            "cancelled_at": now(),
            "error": f"cancelled{': ' + reason if reason else ''}",
        },
        expect_status={SagaStatus.RUNNING, SagaStatus.PENDING},
    )
    if turned:
        log(logging.WARNING, saga_id, None, "cancelled%s", f": {reason}" if reason else "")
        hooks.cancelled(rt, saga_id, reason)
        driver.compensate_next(rt, saga_id)
    return turned


def _eager_compensation_failure(rt: Runtime, header: SagaHeader, exc: Exception) -> None:
    compensation_failed(rt, header, describe_error(exc))


messages.on_eager_failure(compensation=True, handler=_eager_compensation_failure)
