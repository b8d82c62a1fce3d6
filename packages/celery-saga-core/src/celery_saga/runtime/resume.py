"""Moving one stalled execution on: what the recovery pass and operators ask for.

`decide.recovery` says what the record needs; this carries it out. Every action is
a compare-and-set, so two recoverers at once change nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery_saga.config import setting
from celery_saga.models import SagaExecution, SagaStatus, now
from celery_saga.runtime import children, decide, driver, external, history, leases, messages
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.decide import Recover


@dataclass(frozen=True)
class Resumed:
    """What `resume` did to one execution."""

    saga_id: str
    action: str
    acted: bool


def resume(rt: Runtime, execution: SagaExecution, *, stalled_after: float | None = None) -> Resumed:
    """Move a stalled execution on (used by the recovery pass and operators).

    Takes over attempts whose lease expired (or that were sent and never started
    within `stalled_after`, by default `saga_recovery_stalled_after`) and sends them
    again, fails those sent
    `saga_recovery_max_sends` times already, advances a stage whose outcome was
    recorded but not acted on, restarts a lost compensation. Attempts under a live
    lease are left alone, however long they run.
    """
    sid = execution.saga_id
    move = decide.recovery(
        rt.definition,
        execution,
        now(),
        stalled_after=float(
            setting(rt.app, "saga_recovery_stalled_after")
            if stalled_after is None
            else stalled_after
        ),
        max_sends=int(setting(rt.app, "saga_recovery_max_sends")),
    )
    kind = move.kind
    if kind is Recover.MISMATCH:
        driver.same_definition(rt, execution)  # records the reason on the execution
        return Resumed(sid, "definition mismatch: left alone", False)
    if kind is Recover.START:
        if rt.backend.update_saga(
            sid, {"status": SagaStatus.RUNNING}, expect_status={SagaStatus.PENDING}
        ):
            execution.status = SagaStatus.RUNNING
            driver.dispatch_stage(rt, execution, 0)
            return Resumed(sid, "started", True)
        return Resumed(sid, "already started", False)
    if kind is Recover.EXPIRE:
        driver.expire(rt, sid)
        return Resumed(sid, "deadline exceeded: compensating", True)
    if kind in (Recover.REDISPATCH, Recover.REDISPATCH_IN_FLIGHT):
        sent = driver.redispatch(rt, execution, [execution.step(i) for i in move.steps])
        what = "in-flight steps" if kind is Recover.REDISPATCH_IN_FLIGHT else "steps"
        return Resumed(sid, f"re-dispatched {what} {sent}", bool(sent))
    if kind is Recover.GIVE_UP:
        failed = [i for i in move.steps if driver.give_up(rt, execution, i)]
        return Resumed(sid, f"steps {failed} never started: failed", bool(failed))
    if kind is Recover.STAGE_FINISHED:
        assert move.stage is not None
        driver.stage_finished(rt, sid, move.stage, execution)
        return Resumed(sid, f"acted on the outcome of stage {move.stage}", True)
    if kind is Recover.COMPLETE:
        driver.complete(rt, execution)
        return Resumed(sid, "completed", True)
    if kind is Recover.RESEND_COMPENSATION:
        record = execution.step(move.steps[0])
        attempt = record.comp_attempt + 1
        write = rt.backend.take_over(
            sid,
            record.index,
            {
                **leases.fresh_lease(now()),
                "comp_attempt": attempt,
                "sends": record.sends + 1,
                "comp_worker": None,
                "history": history.taken_over(record, compensation=True),
            },
            attempt=record.comp_attempt,
            now=now(),
            compensation=True,
        )
        if write.applied:
            messages.send_compensation(rt, execution, record, attempt, round_start=attempt)
            return Resumed(sid, f"took over the compensation of step {record.index}", True)
        return Resumed(sid, "compensation moved meanwhile", False)
    if kind is Recover.GIVE_UP_COMPENSATION:
        index = move.steps[0]
        acted = driver.give_up_compensation(rt, execution, index)
        return Resumed(sid, f"compensation of step {index} never started: failed", acted)
    if kind is Recover.RESEND_LATE:
        assert move.late is not None
        acted = driver.resend_late(rt, execution, move.steps[0], move.late)
        return Resumed(sid, f"re-sent the undoing of step {move.steps[0]}'s late success", acted)
    if kind is Recover.COMPENSATE_NEXT:
        driver.compensate_next(rt, sid)
        return Resumed(sid, "compensation resumed", True)
    if kind is Recover.TIME_OUT:
        failed = [i for i in move.steps if external.time_out(rt, execution, i)]
        return Resumed(sid, f"external steps {failed} timed out: failed", bool(failed))
    if kind is Recover.CHILDREN:
        acted = children.catch_up(rt, execution, move.steps)
        what = "caught up with" if acted else "waiting for"
        return Resumed(sid, f"{what} the child sagas of steps {list(move.steps)}", acted)
    if kind is Recover.WAIT:
        return Resumed(sid, "attempts in flight under live leases: left alone", False)
    return Resumed(sid, f"nothing to do: {execution.status.value}", False)
