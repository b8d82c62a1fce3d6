"""Derive the saga context and each step's input from stored step records.

The context is never kept as one shared mutable document: it is the saga input
merged with each completed step's output in plan order, with transforms applied
at their place, computed again whenever it is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_saga.definition import (
    ContextFn,
    DictOutput,
    InputSpec,
    LiteralInput,
    LiteralSource,
    MapperInput,
    OutputSpec,
    SagaDefinition,
    Source,
    Stage,
    StepOutputSource,
    StepSpec,
    TransformInput,
)
from celery_saga.errors import SagaError
from celery_saga.models import SagaExecution


class InputResolutionError(SagaError):
    """A transform or input mapper raised, or returned something that is not a dict."""


def _outputs(execution: SagaExecution) -> dict[int, Any]:
    return {record.index: record.output for record in execution.steps}


def apply_transform(fn: ContextFn, ctx: dict[str, Any], what: str) -> dict[str, Any]:
    """``fn(ctx)``, checked to be a dict; its errors become InputResolutionError."""
    try:
        result = fn(dict(ctx))
    except Exception as exc:
        raise InputResolutionError(f"{what} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, Mapping):
        raise InputResolutionError(
            f"{what} must return a dict, but returned {type(result).__name__}"
        )
    return dict(result)


def with_stage_transforms(stage: Stage, ctx: dict[str, Any]) -> dict[str, Any]:
    """`ctx` after the transforms placed before `stage`."""
    for n, fn in enumerate(stage.transforms):
        ctx = apply_transform(fn, ctx, f"transform #{n + 1} before stage {stage.index}")
    return ctx


def with_final_transforms(definition: SagaDefinition, ctx: dict[str, Any]) -> dict[str, Any]:
    """`ctx` after the transforms placed after the last stage."""
    for n, fn in enumerate(definition.final_transforms):
        ctx = apply_transform(fn, ctx, f"final transform #{n + 1}")
    return ctx


def context_before(
    definition: SagaDefinition, stage_index: int, execution: SagaExecution
) -> dict[str, Any]:
    """The context a stage's steps see: input, earlier outputs, transforms up to it."""
    outputs = _outputs(execution)
    ctx: dict[str, Any] = dict(execution.input)
    for stage in definition.stages[: stage_index + 1]:
        ctx = with_stage_transforms(stage, ctx)
        if stage.index == stage_index:
            break
        for spec in stage.steps:
            out = outputs.get(spec.index)
            if isinstance(out, Mapping):
                ctx.update(out)
    return ctx


def final_context(definition: SagaDefinition, execution: SagaExecution) -> dict[str, Any]:
    """The context after every stage and trailing transform."""
    last = len(definition.stages) - 1
    ctx = context_before(definition, last, execution)
    outputs = _outputs(execution)
    for spec in definition.stages[last].steps:
        out = outputs.get(spec.index)
        if isinstance(out, Mapping):
            ctx.update(out)
    return with_final_transforms(definition, ctx)


def _source(source: Source, ctx: dict[str, Any], outputs: dict[int, Any]) -> Any:
    if isinstance(source, StepOutputSource):
        out = outputs.get(source.index)
        return dict(out) if isinstance(out, Mapping) else ({} if out is None else out)
    if isinstance(source, LiteralSource):
        return source.value
    return dict(ctx)


def _transform(spec: TransformInput, ctx: dict[str, Any], outputs: dict[int, Any]) -> Any:
    values = [_source(s, ctx, outputs) for s in spec.sources]
    if spec.fn is None:
        merged: dict[str, Any] = {}
        for value in values:
            if isinstance(value, Mapping):
                merged.update(value)
        return merged
    try:
        return spec.fn(*values)
    except Exception as exc:
        raise InputResolutionError(
            f"transform {getattr(spec.fn, '__qualname__', spec.fn)!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def step_input(spec: StepSpec, ctx: dict[str, Any], execution: SagaExecution) -> dict[str, Any]:
    """The keyword arguments step `spec` is called with, given the context before it."""
    source: InputSpec = spec.input
    if isinstance(source, MapperInput):
        return apply_transform(
            source.fn, ctx, f"input mapper of step {spec.index} ({spec.task_name})"
        )
    if isinstance(source, LiteralInput):
        return dict(source.value)
    if isinstance(source, TransformInput):
        value = _transform(source, ctx, _outputs(execution))
        if value is None:
            return {}
        return dict(value) if isinstance(value, Mapping) else {"result": value}
    return dict(ctx)


def saga_output(definition: SagaDefinition, execution: SagaExecution) -> Any:
    """What `SagaResult.get()` returns: a functional saga's return value, else the context."""
    ctx = final_context(definition, execution)
    if definition.output is None:
        return ctx
    return _output(definition.output, ctx, _outputs(execution))


def _output(spec: OutputSpec, ctx: dict[str, Any], outputs: dict[int, Any]) -> Any:
    if isinstance(spec, DictOutput):
        return {key: _output(value, ctx, outputs) for key, value in spec.items}
    if isinstance(spec, TransformInput):
        return _transform(spec, ctx, outputs)
    return _source(spec, ctx, outputs)
