"""What each step was called with: records keep outputs, not inputs, so inputs are derived.

With the saga's definition registered in this process (the web view started with
``-A`` naming the module that defines it) and the same definition hash as the
record, a step's input is derived as the runtime derives it: the context before its
stage (transforms applied) through the step's input spec. Without it, the input
shown is the context before the stage from the records alone: the saga input merged
with the outputs of earlier stages, transforms left out (and the page says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_saga import registry
from celery_saga.context import context_before, step_input
from celery_saga.errors import SagaError
from celery_saga.models import SagaExecution, StepRecord, StepStatus

#: How an input was found, shown next to it.
FROM_DEFINITION = "derived from the saga's definition and the stored outputs"
FROM_RECORDS = (
    "the context before this stage, from the stored records (the saga is not defined in "
    "this process, so input mappers and transforms are not applied)"
)
OTHER_DEFINITION = (
    "the context before this stage, from the stored records (the execution was started "
    "by another version of the saga than the one defined here, so input mappers and "
    "transforms are not applied)"
)


@dataclass(frozen=True)
class StepInput:
    """A step's input as far as it can be known: the value, how it was found, or why not."""

    value: Any = None
    how: str = ""
    error: str | None = None
    reached: bool = True


def _reached(record: StepRecord) -> bool:
    return not (record.status is StepStatus.PENDING and record.attempt == 0) and (
        record.status is not StepStatus.SKIPPED
    )


def step_inputs(execution: SagaExecution, app: Any = None) -> dict[int, StepInput]:
    """Each step's input by index (`reached` False for a step that has not started)."""
    try:
        saga = registry.lookup(execution.saga_name, app)
        definition = saga.definition
    except SagaError:
        return _from_records(execution, FROM_RECORDS)
    if definition.hash != execution.definition_hash:
        return _from_records(execution, OTHER_DEFINITION)
    found: dict[int, StepInput] = {}
    for stage in definition.stages:
        ctx: dict[str, Any] | None = None
        problem = None
        try:
            ctx = context_before(definition, stage.index, execution)
        except Exception as exc:  # a user's transform: show what it raised, never fail the page
            problem = f"the context before stage {stage.index} cannot be derived: {exc}"
        for spec in stage.steps:
            try:
                record = execution.step(spec.index)
            except KeyError:
                continue
            if not _reached(record):
                found[spec.index] = StepInput(reached=False)
            elif ctx is None:
                found[spec.index] = StepInput(error=problem)
            else:
                try:
                    found[spec.index] = StepInput(step_input(spec, ctx, execution), FROM_DEFINITION)
                except Exception as exc:  # an input mapper of the user's
                    found[spec.index] = StepInput(error=f"cannot be derived: {exc}")
    return found


def _from_records(execution: SagaExecution, how: str) -> dict[int, StepInput]:
    found: dict[int, StepInput] = {}
    for record in execution.steps:
        if not _reached(record):
            found[record.index] = StepInput(reached=False)
            continue
        ctx = dict(execution.input)
        for other in sorted(execution.steps, key=lambda s: (s.stage, s.index)):
            if other.stage < record.stage and isinstance(other.output, dict):
                ctx.update(other.output)
        found[record.index] = StepInput(ctx, how)
    return found
