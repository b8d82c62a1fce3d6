"""The compiled form of a saga: stages of steps, input specs, transforms, a hash.

Both the builder (`Saga.add_step`...) and the functional API (`@saga`) produce a
`SagaDefinition`. It is immutable, holds the plain Python callables of transforms
and input mappers (never serialized), and hashes to a short digest that is stored
with each execution so a worker with a different definition refuses to advance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_saga.errors import SagaDefinitionError
from celery_saga.retry import RetryPolicy

if TYPE_CHECKING:
    from celery import Celery, Task

Context = dict[str, Any]
ContextFn = Callable[[Context], Any]

# -- where a step's input comes from ----------------------------------------------------


@dataclass(frozen=True)
class ContextInput:
    """The step receives the whole saga context as keyword arguments (the default)."""


@dataclass(frozen=True)
class MapperInput:
    """The step receives ``fn(context)``, which must return a dict."""

    fn: ContextFn


@dataclass(frozen=True)
class LiteralInput:
    """The step receives a fixed dict given in the definition."""

    value: Mapping[str, Any]


@dataclass(frozen=True)
class StepOutputSource:
    """A transform source: the output of step `index`."""

    index: int


@dataclass(frozen=True)
class ContextSource:
    """A transform source: the saga context at that point."""


@dataclass(frozen=True)
class LiteralSource:
    """A transform source: a fixed value."""

    value: Any


Source = StepOutputSource | ContextSource | LiteralSource


@dataclass(frozen=True)
class TransformInput:
    """The step receives ``fn(*sources)``, or the sources' dicts merged when fn is None."""

    sources: tuple[Source, ...]
    fn: Callable[..., Any] | None = None


InputSpec = ContextInput | MapperInput | LiteralInput | TransformInput


@dataclass(frozen=True)
class DictOutput:
    """A functional saga returned a dict whose values are references."""

    items: tuple[tuple[str, OutputSpec], ...]


OutputSpec = ContextSource | StepOutputSource | TransformInput | LiteralSource | DictOutput

# -- steps and stages --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSpec:
    """One step: a Celery task (object or name), its compensation, its input."""

    index: int
    stage: int
    task_name: str
    task: Task | None = field(default=None, compare=False)
    compensation_name: str | None = None
    compensation: Task | None = field(default=None, compare=False)
    no_compensation: bool = False
    input: InputSpec = field(default_factory=ContextInput)
    options: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = field(default=None, compare=False)
    compensation_retry: RetryPolicy | None = field(default=None, compare=False)

    @property
    def by_name(self) -> bool:
        """True when the step was given as a task name (bookkeeping by reply message)."""
        return self.task is None

    @property
    def compensated(self) -> bool:
        """True when this step has a compensation to run."""
        return self.compensation_name is not None and not self.no_compensation


@dataclass(frozen=True)
class Stage:
    """Steps that start together: one step, or a parallel group.

    `transforms` are context transforms (`add_transform`) applied before it runs.
    """

    index: int
    steps: tuple[StepSpec, ...]
    parallel: bool = False
    transforms: tuple[ContextFn, ...] = ()


@dataclass(frozen=True)
class SagaDefinition:
    """Everything needed to run a saga, in plan order."""

    name: str
    stages: tuple[Stage, ...]
    app: Celery = field(compare=False)
    final_transforms: tuple[ContextFn, ...] = ()
    output: OutputSpec | None = None
    deadline: float | None = field(default=None, compare=False)

    @property
    def steps(self) -> tuple[StepSpec, ...]:
        """Every step, in plan order."""
        return tuple(step for stage in self.stages for step in stage.steps)

    def step(self, index: int) -> StepSpec:
        """The step at plan position `index`."""
        for spec in self.steps:
            if spec.index == index:
                return spec
        raise SagaDefinitionError(f"saga {self.name!r} has no step {index}")

    def describe(self) -> list[Any]:
        """A JSON-able outline of the plan: what the hash covers."""
        outline: list[Any] = []
        for stage in self.stages:
            outline.append(
                {
                    "parallel": stage.parallel,
                    "transforms": [_callable_id(fn) for fn in stage.transforms],
                    "steps": [
                        [
                            spec.task_name,
                            spec.compensation_name,
                            spec.no_compensation,
                            _input_id(spec.input),
                        ]
                        for spec in stage.steps
                    ],
                }
            )
        outline.append({"final": [_callable_id(fn) for fn in self.final_transforms]})
        outline.append({"output": _output_id(self.output)})
        return outline

    @property
    def hash(self) -> str:
        """Short digest of `describe()`; stored with every execution."""
        cached: str | None = self.__dict__.get("_hash")
        if cached is None:
            raw = json.dumps([self.name, self.describe()], sort_keys=True, default=str)
            cached = hashlib.sha256(raw.encode()).hexdigest()[:16]
            object.__setattr__(self, "_hash", cached)
        return cached


def _callable_id(fn: Callable[..., Any] | None) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _source_id(source: Source) -> Any:
    if isinstance(source, StepOutputSource):
        return ["step", source.index]
    if isinstance(source, LiteralSource):
        return ["literal", source.value]
    return ["context"]


def _input_id(spec: InputSpec) -> Any:
    if isinstance(spec, MapperInput):
        return ["mapper", _callable_id(spec.fn)]
    if isinstance(spec, LiteralInput):
        return ["literal", dict(spec.value)]
    if isinstance(spec, TransformInput):
        return ["transform", [_source_id(s) for s in spec.sources], _callable_id(spec.fn)]
    return ["context"]


def _output_id(spec: OutputSpec | None) -> Any:
    if spec is None:
        return None
    if isinstance(spec, DictOutput):
        return ["dict", [[k, _output_id(v)] for k, v in spec.items]]
    if isinstance(spec, TransformInput):
        return _input_id(spec)
    return _source_id(spec)
