"""The names of the spans and span attributes this instrumentation records."""

from __future__ import annotations

#: Span names: ``saga <saga name>``, ``saga.step <task>``, ``saga.compensate <task>``.
SAGA_SPAN = "saga {}"
STEP_SPAN = "saga.step {}"
COMPENSATION_SPAN = "saga.compensate {}"

#: The execution's id, on every span.
SAGA_ID = "saga.id"
#: The saga's registered name, on every span.
SAGA_NAME = "saga.name"
#: A child saga's parent execution (saga span).
SAGA_PARENT_ID = "saga.parent_id"
#: True when `run()` found an execution by its idempotency key and created nothing
#: (saga span; `saga.id` is then that execution's).
SAGA_EXISTING = "saga.existing"
#: The step's index in the definition.
STEP_INDEX = "saga.step.index"
#: The step's stage: the members of a parallel group share one.
STEP_GROUP = "saga.step.group"
#: The attempt number (of the step, or of its compensation).
STEP_ATTEMPT = "saga.step.attempt"
#: ``step`` or ``compensation``.
STEP_PART = "saga.step.part"
#: The Celery task id of the delivery.
STEP_TASK_ID = "saga.step.task_id"
#: True for an attempt sent again (retry, recovery, redelivery, revert): its span links
#: back to the saga's original trace.
STEP_RESENT = "saga.step.resent"
#: False when the delivery did not run the body (refused, or put off while another
#: process holds the attempt's lease).
STEP_RAN = "saga.step.ran"

#: On the link from a re-sent attempt to the saga's span: what it points at.
LINK_TO = "saga.link"
#: `LINK_TO`'s value: the saga's original trace.
LINK_ORIGINAL = "original"
