"""External steps: a step whose outcome comes from outside, with a timeout.

Reaching the step writes it RUNNING with the lease owner ``external`` and, as the
lease's expiry, its timeout; no message is sent and no worker is held. The outcome
arrives by `complete` or `fail` (from `SagaResult.complete_step` / `fail_step` or
the CLI), in any process that has the saga's definition: it is recorded by the
same compare-and-set as a task's outcome, so a second completion is refused, and
the saga goes on from there. A timeout is found by the recovery pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery_saga.backends.base import StepExpect
from celery_saga.errors import SagaError, StepOutputError
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepStatus, now
from celery_saga.response import ensure_json
from celery_saga.runtime import driver, hooks
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.decide import FORWARD, waiting_outside
from celery_saga.runtime.log import log

#: The lease owner of an external step waiting for its outcome.
OWNER = "external"


@dataclass(frozen=True)
class StepCompletion:
    """What `complete_step` / `fail_step` did: applied, or refused and why.

    True when applied, so ``if result.complete_step(...)`` reads naturally.
    """

    applied: bool
    saga_id: str
    step: str
    reason: str

    def __bool__(self) -> bool:
        return self.applied


def wait(
    rt: Runtime, execution: SagaExecution, index: int, attempt: int, _input: dict[str, Any]
) -> None:
    """Reach external step `index`: record that it waits, and until when."""
    spec = rt.definition.step(index)
    started = now()
    write = rt.backend.update_step(
        execution.saga_id,
        index,
        {
            "status": StepStatus.RUNNING,
            "attempt": attempt,
            "started_at": started,
            "lease_owner": OWNER,
            "lease_expires_at": None if spec.timeout is None else started + spec.timeout,
            "sent_at": None,
        },
        expect=StepExpect(
            status=FORWARD, attempt_at_most=attempt, saga_status=frozenset({SagaStatus.RUNNING})
        ),
    )
    if (
        not write.applied
        and write.status in FORWARD
        and write.saga_status is not SagaStatus.RUNNING
    ):
        driver.finish(
            rt, execution.saga_id, index, attempt, StepStatus.SKIPPED,
            {"error": "not started: the saga stopped before this step was reached"},
        )  # fmt: skip
        return
    if write.applied:
        log(
            logging.INFO,
            execution.saga_id,
            index,
            "waiting for external step %r%s",
            spec.task_name,
            "" if spec.timeout is None else f" (timeout {spec.timeout:g}s)",
        )


def time_out(rt: Runtime, execution: SagaExecution, index: int) -> bool:
    """Fail an external step that waited past its timeout (the saga compensates)."""
    record = execution.step(index)
    spec = rt.definition.step(index)
    error = f"external step {spec.task_name!r} was not completed within {spec.timeout:g}s"
    write = driver.finish(
        rt,
        execution.saga_id,
        index,
        record.attempt,
        StepStatus.FAILED,
        {"error": error, "lease_owner": None, "lease_expires_at": None},
        failing=True,
    )
    return write.applied


def index_of(rt: Runtime, name: str) -> int:
    """The index of the external step called `name` (a clear error if there is none)."""
    externals = [s for s in rt.definition.steps if s.kind == StepKind.EXTERNAL.value]
    for spec in externals:
        if spec.task_name == name:
            return spec.index
    known = ", ".join(repr(s.task_name) for s in externals) or "none"
    raise SagaError(
        f"saga {rt.definition.name!r} has no external step named {name!r} "
        f"(its external steps: {known})"
    )


def settle(
    rt: Runtime,
    saga_id: str,
    name: str,
    *,
    output: Any = None,
    error: str | None = None,
) -> StepCompletion:
    """Record the outcome of external step `name`: success with `output`, or `error`.

    Refused (never applied twice) when the step is not waiting: already completed or
    failed, not reached yet, or the saga is compensating or finished.
    """
    index = index_of(rt, name)
    execution = rt.backend.get(saga_id)
    if execution is None:
        raise LookupError(f"saga {saga_id} does not exist in {rt.backend!r}")
    record = execution.step(index)

    def refused(reason: str) -> StepCompletion:
        log(
            logging.WARNING, saga_id, index, "outcome of external step %r refused: %s", name, reason
        )
        return StepCompletion(False, saga_id, name, reason)

    why = f" ({execution.error})" if execution.error else ""
    state = f"the saga is {execution.status.value}{why}"
    if record.status not in FORWARD:
        return refused(
            f"step {name!r} is already {record.status.value} and {state}: nothing was changed"
        )
    if execution.status is not SagaStatus.RUNNING:
        return refused(f"{state}; step {name!r} no longer waits for an outcome")
    if not waiting_outside(record):
        return refused(f"step {name!r} has not been reached yet (it is {record.status.value})")
    if error is None:
        if output is None:
            output = {}
        if not isinstance(output, dict):
            raise StepOutputError(
                f"the output of external step {name!r} must be a dict (it is merged into the "
                f"saga context), got {type(output).__name__}"
            )
        ensure_json(output, f"the output of external step {name!r}", "external output")
        changes: dict[str, Any] = {"output": output, "compensation_data": output}
        status = StepStatus.SUCCESS
    else:
        changes = {"error": f"external step {name!r} failed: {error}"}
        status = StepStatus.FAILED
    changes.update({"lease_owner": None, "lease_expires_at": None})
    write = driver.finish(
        rt, saga_id, index, record.attempt, status, changes, failing=status is StepStatus.FAILED
    )
    if not write.applied:
        return refused(f"step {name!r} is already {write.status.value}: nothing was changed")
    return StepCompletion(True, saga_id, name, f"step {name!r} {status.value}")


hooks.on_start(StepKind.EXTERNAL.value, wait)
