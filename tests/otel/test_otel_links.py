"""Attempts sent again link back to the saga's original trace (real SDK, real worker).

A retry of the step's retry policy, a step the recovery pass takes over after its
worker's lease expired, and the compensations of a reverted saga: each is a child of
what sent it, and links to the saga's span, found from the `trace_context` on the record
and carried in the saga header.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from otel_support import (
    TIMEOUT,
    link_targets,
    named,
    of_saga,
    one,
    parent_of,
    require_sdk,
    wait_for,
)

require_sdk()

from opentelemetry.trace import StatusCode  # noqa: E402

from celery_saga import SagaStatus, StepStatus, recover  # noqa: E402

ORIGINAL = {"saga.link": "original"}


def test_retried_attempts_link_to_the_original_trace(
    setup: Any, tracing: Any, instrumented: Any
) -> None:
    flaky = setup.sagas.flaky
    prefix = flaky.name.rsplit(".", 1)[0]
    with setup.worker():
        result = flaky.run(order_id="r-1", fail_times=2)
        assert result.get(timeout=TIMEOUT)["tries"] == 3
        sid = result.saga_id
        wait_for(lambda: len(of_saga(tracing.spans(), sid)) >= 5, TIMEOUT, "every span to end")
    spans = of_saga(tracing.spans(), sid)
    saga = one(spans, f"saga {flaky.name}")
    first = one(spans, f"saga.step {prefix}.first")
    attempts = named(spans, f"saga.step {prefix}.flaky")
    assert [a.attributes["saga.step.attempt"] for a in attempts] == [1, 2, 3]
    assert parent_of(first) == parent_of(attempts[0]) == saga.context.span_id
    assert not first.links and not attempts[0].links
    origin = (saga.context.trace_id, saga.context.span_id, ORIGINAL)
    for before, retry in itertools.pairwise(attempts):
        assert retry.attributes["saga.step.resent"] is True
        assert link_targets(retry) == [origin]
        # Sent by the failed attempt: its child, in the same trace.
        assert parent_of(retry) == before.context.span_id
        assert retry.context.trace_id == saga.context.trace_id
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert "upstream unavailable (try 2)" in attempts[1].status.description


def test_a_recovered_attempt_links_to_the_original_trace(
    setup: Any, tracing: Any, instrumented: Any
) -> None:
    order = setup.sagas.order
    prefix = order.name.rsplit(".", 1)[0]
    # The saga is sent while no worker runs; its first step's message is lost, and a
    # worker that claimed the step is gone: its lease has expired.
    result = order.run(order_id="l-1")
    sid = result.saga_id
    assert setup.purge() == 1
    setup.store.update_step(
        sid, 0, {"lease_owner": "gone-host/1/0/x", "lease_expires_at": time.time() - 1}
    )
    assert result.execution.trace_context is not None
    with tracing.tracer().start_as_current_span("recovery pass") as recovery:
        report = recover(setup.app, stalled_after=0)
    assert [r.action for r in report.resumed if r.saga_id == sid] == ["re-dispatched steps [0]"]
    with setup.worker():
        result.get(timeout=TIMEOUT)
        wait_for(lambda: len(of_saga(tracing.spans(), sid)) >= 5, TIMEOUT, "every span to end")
    assert result.execution.step(0).attempt == 2
    spans = of_saga(tracing.spans(), sid)
    saga = one(spans, f"saga {order.name}")
    reserve = one(spans, f"saga.step {prefix}.reserve")
    assert reserve.attributes["saga.step.attempt"] == 2
    assert reserve.attributes["saga.step.resent"] is True
    # A child of the recovery pass that sent it, linked to the saga's trace.
    assert parent_of(reserve) == recovery.get_span_context().span_id
    assert reserve.context.trace_id == recovery.get_span_context().trace_id
    assert reserve.context.trace_id != saga.context.trace_id
    assert link_targets(reserve) == [(saga.context.trace_id, saga.context.span_id, ORIGINAL)]
    # The steps after it are the saga's own flow again: children of the saga's span.
    for what in ("charge", "ship", "notify"):
        step = one(spans, f"saga.step {prefix}.{what}")
        assert parent_of(step) == saga.context.span_id and not step.links, what


def test_a_recovered_attempt_with_no_sender_span_starts_a_trace_linked_to_the_saga(
    setup: Any, tracing: Any, instrumented: Any
) -> None:
    order = setup.sagas.order
    prefix = order.name.rsplit(".", 1)[0]
    result = order.run(order_id="l-2")
    sid = result.saga_id
    assert setup.purge() == 1
    setup.store.update_step(
        sid, 0, {"lease_owner": "gone-host/1/0/x", "lease_expires_at": time.time() - 1}
    )
    recover(setup.app, stalled_after=0)  # e.g. `celery saga recover`: no span around it
    with setup.worker():
        result.get(timeout=TIMEOUT)
        wait_for(lambda: len(of_saga(tracing.spans(), sid)) >= 5, TIMEOUT, "every span to end")
    spans = of_saga(tracing.spans(), sid)
    saga = one(spans, f"saga {order.name}")
    reserve = one(spans, f"saga.step {prefix}.reserve")
    assert reserve.parent is None and reserve.context.trace_id != saga.context.trace_id
    assert link_targets(reserve) == [(saga.context.trace_id, saga.context.span_id, ORIGINAL)]


def test_the_compensations_of_a_reverted_saga_link_to_the_original_trace(
    setup: Any, tracing: Any, instrumented: Any
) -> None:
    order = setup.sagas.order
    prefix = order.name.rsplit(".", 1)[0]
    with setup.worker():
        result = order.run(order_id="v-1")
        result.get(timeout=TIMEOUT)
        sid = result.saga_id
        with tracing.tracer().start_as_current_span("operator") as operator:
            result.revert("customer returned the parcel")
        wait_for(lambda: result.status is SagaStatus.REVERTED, TIMEOUT, "the revert")
        wait_for(lambda: len(of_saga(tracing.spans(), sid)) >= 8, TIMEOUT, "every span to end")
    assert [s.status for s in result.execution.steps[:3]] == [StepStatus.COMPENSATED] * 3
    spans = of_saga(tracing.spans(), sid)
    saga = one(spans, f"saga {order.name}")
    comps = sorted(
        (s for s in spans if s.name.startswith("saga.compensate")), key=lambda s: s.start_time
    )
    assert len(comps) == 3 and comps[-1].name == f"saga.compensate {prefix}.undo_reserve"
    origin = (saga.context.trace_id, saga.context.span_id, ORIGINAL)
    for comp in comps:
        assert comp.attributes["saga.step.resent"] is True, comp.name
        assert link_targets(comp) == [origin], comp.name
        # The operator's request started the revert: its trace holds the compensations.
        assert comp.context.trace_id == operator.get_span_context().trace_id, comp.name
    assert parent_of(comps[0]) == operator.get_span_context().span_id
