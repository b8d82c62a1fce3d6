"""Composition in every environment of the `env` fixture: nested sagas, conditions,
external steps, revert; eagerly (as users' unit tests run them) and on real workers.

Tasks append to one journal list per test (the `root` input), across every level of a
nested saga, so each test checks the exact order of steps and compensations.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
from e2e_support import Env, wait_for

from celery_saga import (
    SagaCompensated,
    SagaError,
    SagaResult,
    SagaReverted,
    SagaStatus,
    StepKind,
    StepStatus,
    recover,
)

TIMEOUT = 60


def root() -> str:
    return f"root-{os.urandom(6).hex()}"


def children_of(env: Env, saga_id: str) -> list[Any]:
    return env.store.list(parent_id=saga_id).items


def only_child(env: Env, saga_id: str) -> Any:
    (summary,) = children_of(env, saga_id)
    execution = env.store.get(summary.saga_id)
    assert execution is not None
    return execution


def compensated(result: Any) -> SagaCompensated:
    with pytest.raises(SagaCompensated) as info:
        result.get(timeout=TIMEOUT)
    return info.value


# -- nested sagas -------------------------------------------------------------------------


def test_a_three_level_nested_saga_completes_with_parent_links(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.top.run(root=key)
    output = result.get(timeout=TIMEOUT)
    assert c.journal.log(key) == [f"do:{s}" for s in ("T1", "M1", "L1", "L2", "L3", "M2", "T2")]
    assert {k for k, v in output.items() if v is True} == {"T1", "M1", "L1", "L2", "L3", "M2", "T2"}
    top = result.execution
    middle = only_child(env, top.saga_id)
    leaf = only_child(env, middle.saga_id)
    assert [e.status for e in (top, middle, leaf)] == [SagaStatus.COMPLETED] * 3
    assert (middle.parent_id, middle.parent_step) == (top.saga_id, 1)
    assert (leaf.parent_id, leaf.parent_step) == (middle.saga_id, 1)
    assert middle.idempotency_key == f"{top.saga_id}/1"
    assert top.step(1).kind == StepKind.SAGA.value and top.step(1).child_id == middle.saga_id
    assert middle.step(1).child_id == leaf.saga_id


def test_a_failure_in_the_innermost_saga_compensates_all_three_levels_once(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.top.run(root=key, fail="L3")
    error = compensated(result)
    assert c.journal.log(key) == [
        *(f"do:{s}" for s in ("T1", "M1", "L1", "L2", "L3")),
        *(f"undo:{s}" for s in ("L2", "L1", "M1", "T1")),
    ]
    top = error.execution
    middle = only_child(env, top.saga_id)
    leaf = only_child(env, middle.saga_id)
    assert [e.status for e in (top, middle, leaf)] == [SagaStatus.COMPENSATED] * 3
    # The child already undid itself: its step in the parent failed and was not compensated.
    assert top.step(1).status is StepStatus.FAILED and top.step(1).comp_attempt == 0
    assert middle.step(1).status is StepStatus.FAILED
    assert "L3 was told to fail" in (top.error or "")


def test_a_parent_compensating_after_its_child_completed_reverts_the_child_whole(
    env: Env,
) -> None:
    c, key = env.scenarios.composition, root()
    result = c.top.run(root=key, fail="T2")
    error = compensated(result)
    assert c.journal.log(key) == [
        *(f"do:{s}" for s in ("T1", "M1", "L1", "L2", "L3", "M2", "T2")),
        *(f"undo:{s}" for s in ("M2", "L3", "L2", "L1", "M1", "T1")),
    ]
    top = error.execution
    middle = only_child(env, top.saga_id)
    leaf = only_child(env, middle.saga_id)
    assert top.status is SagaStatus.COMPENSATED
    assert middle.status is leaf.status is SagaStatus.REVERTED
    assert top.step(1).status is StepStatus.COMPENSATED
    assert middle.step(1).status is StepStatus.COMPENSATED


def test_a_child_in_a_parallel_group_with_a_failing_member_is_undone_once(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.group.run(root=key, fail="PB")
    error = compensated(result)
    log = c.journal.log(key)
    assert log[0] == "do:P0" and log[-1] == "undo:P0" and "do:P3" not in log
    assert Counter(log).most_common(1)[0][1] == 1, log  # nothing done or undone twice
    assert "undo:PA" in log and "undo:PB" not in log  # the failed member did nothing
    step = error.execution.step(2)
    if step.child_id is None:  # the failure came first: the child never started
        assert step.status is StepStatus.SKIPPED
        assert not children_of(env, result.saga_id)
        assert not [e for e in log if e.endswith(("L1", "L2", "L3"))]
    else:  # it ran to completion, then was reverted whole, in reverse order
        child = only_child(env, result.saga_id)
        assert child.status is SagaStatus.REVERTED
        assert step.status is StepStatus.COMPENSATED
        leaf = [e for e in log if e.endswith(("L1", "L2", "L3"))]
        assert leaf == [*(f"do:{s}" for s in ("L1", "L2", "L3")), "undo:L3", "undo:L2", "undo:L1"]


def test_cancelling_a_parent_cancels_its_running_child(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.approval.run(root=key)

    def child_waiting() -> Any:
        kids = children_of(env, result.saga_id)
        return kids and waiting(SagaResult(kids[0].saga_id, env.store))

    wait_for(child_waiting, TIMEOUT, "the child saga to wait for its approval")
    assert result.cancel("order withdrawn")
    wait_for(lambda: result.status is SagaStatus.CANCELLED, TIMEOUT, "the parent to end")
    child = only_child(env, result.saga_id)
    assert child.status is SagaStatus.CANCELLED
    assert "order withdrawn" in (child.error or "")
    assert c.journal.log(key) == ["do:A0", "do:A1", "undo:A1", "undo:A0"]
    assert result.execution.step(1).status is StepStatus.FAILED  # the child undid itself


# -- conditional steps ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["gift", "gift_functional"])
@pytest.mark.parametrize("wrap", [False, True])
def test_a_conditional_step_is_skipped_or_taken(env: Env, which: str, wrap: bool) -> None:
    c, key = env.scenarios.composition, root()
    result = getattr(c, which).run(root=key, gift_wrap=wrap)
    result.get(timeout=TIMEOUT)
    expected = ["do:G1", "do:WRAP", "do:G3"] if wrap else ["do:G1", "do:G3"]
    assert c.journal.log(key) == expected
    step = result.execution.step(1)
    assert step.status is (StepStatus.SUCCESS if wrap else StepStatus.SKIPPED)
    assert ("WRAP" in result.context) is wrap


def test_a_skipped_step_needs_no_compensation(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    compensated(c.gift.run(root=key, gift_wrap=False, fail="G3"))
    assert c.journal.log(key) == ["do:G1", "do:G3", "undo:G1"]


def test_a_condition_that_raises_fails_the_saga_with_its_error_and_compensates(
    env: Env,
) -> None:
    c, key = env.scenarios.composition, root()
    error = compensated(c.bad_condition.run(root=key))
    assert c.journal.log(key) == ["do:G1", "undo:G1"]
    step = error.execution.step(1)
    assert step.status is StepStatus.FAILED
    assert "broken_predicate" in (step.error or "") and "KeyError" in (step.error or "")


# -- external steps ----------------------------------------------------------------------


def waiting(result: Any) -> bool:
    execution = result.execution
    return execution.step(1).status is StepStatus.RUNNING and execution.step(1).lease_owner


def test_an_external_step_completed_through_another_handle_goes_on_once(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.checkout.run(root=key)
    wait_for(lambda: waiting(result), TIMEOUT, "the saga to wait for the payment")
    assert result.status is SagaStatus.RUNNING
    handle = SagaResult(result.saga_id, env.store)  # as a webhook handler would make it
    done = handle.complete_step("await_payment", {"txn": "t-1"})
    assert done and done.applied
    again = handle.complete_step("await_payment", {"txn": "t-2"})
    assert not again and "already success" in again.reason
    output = result.get(timeout=TIMEOUT)
    assert output["txn"] == "t-1"
    assert c.journal.log(key) == ["do:C1", "do:C3"]


def test_an_external_step_failed_from_outside_compensates(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.checkout.run(root=key)
    wait_for(lambda: waiting(result), TIMEOUT, "the saga to wait for the payment")
    assert result.fail_step("await_payment", "card declined")
    error = compensated(result)
    assert "card declined" in (error.execution.step(1).error or "")
    assert c.journal.log(key) == ["do:C1", "undo:C1"]


def test_a_completed_external_step_is_compensated_with_its_output(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.checkout.run(root=key, fail="C3")
    wait_for(lambda: waiting(result), TIMEOUT, "the saga to wait for the payment")
    assert result.complete_step("await_payment", {"txn": "t-9", "root": key})
    compensated(result)
    assert c.journal.log(key) == ["do:C1", "do:C3", "undo:payment:t-9", "undo:C1"]


def test_an_external_step_past_its_timeout_fails_and_the_saga_compensates(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.checkout_short.run(root=key)
    wait_for(lambda: waiting(result), TIMEOUT, "the saga to wait for the payment")

    def recovered() -> bool:
        recover(env.app, stalled_after=0.2)  # a beat schedule, in fast motion
        return result.status is SagaStatus.COMPENSATED

    wait_for(recovered, TIMEOUT, "the timeout to fail the step")
    step = result.execution.step(1)
    assert step.status is StepStatus.FAILED
    assert "not completed within 1s" in (step.error or "")
    late = result.complete_step("await_payment", {"txn": "late"})
    assert not late and "compensated" in late.reason
    assert c.journal.log(key) == ["do:C1", "undo:C1"]


def test_a_completion_after_the_saga_was_cancelled_is_refused_saying_why(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.checkout.run(root=key)
    wait_for(lambda: waiting(result), TIMEOUT, "the saga to wait for the payment")
    assert result.cancel("customer left")
    wait_for(lambda: result.status is SagaStatus.CANCELLED, TIMEOUT, "the cancellation")
    refused = result.complete_step("await_payment", {"txn": "t-3"})
    assert not refused.applied
    assert "cancelled" in refused.reason and "customer left" in refused.reason
    assert result.execution.step(1).status is StepStatus.SKIPPED
    assert c.journal.log(key) == ["do:C1", "undo:C1"]


def test_an_unknown_external_step_name_is_a_clear_error(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.checkout.run(root=key)
    wait_for(lambda: waiting(result), TIMEOUT, "the saga to wait for the payment")
    with pytest.raises(SagaError, match=r"no external step named 'await_paymnet'.*await_payment"):
        result.complete_step("await_paymnet", {})
    assert result.cancel()


# -- revert -----------------------------------------------------------------------------------


def test_revert_of_a_completed_saga_compensates_in_reverse_with_retries(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.revertible.run(root=key)
    result.get(timeout=TIMEOUT)
    result.revert("the customer returned the order")
    wait_for(lambda: result.status is SagaStatus.REVERTED, TIMEOUT, "the revert")
    assert c.journal.log(key) == ["do:R1", "do:R2", "undo:R2", "undo:R1"]
    assert c.journal.count(f"flaky:{key}") == 3  # failed twice, then succeeded
    with pytest.raises(SagaReverted, match="the customer returned the order"):
        result.get(timeout=TIMEOUT)
    execution = result.execution
    assert execution.revert_reason == "the customer returned the order"
    assert [s.status for s in execution.steps] == [StepStatus.COMPENSATED] * 2
    assert any(s.saga_id == result.saga_id for s in env.store.list(status="reverted").items)
    with pytest.raises(SagaError, match="is reverted: only a COMPLETED saga can be reverted"):
        result.revert()


def test_revert_of_a_saga_that_did_not_complete_is_refused_with_its_status(env: Env) -> None:
    c, key = env.scenarios.composition, root()
    result = c.revertible.run(root=key, fail="R2")
    compensated(result)
    with pytest.raises(SagaError, match="is compensated: only a COMPLETED saga"):
        result.revert()
    assert result.status is SagaStatus.COMPENSATED
