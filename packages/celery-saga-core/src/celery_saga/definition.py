"""The compiled form of a saga: stages of steps, input specs, transforms, a hash.

Both the builder (`Saga.add_step`...) and the functional API (`@saga`) produce a
`SagaDefinition`. It is immutable, holds the plain Python callables of transforms
and input mappers (never serialized), and hashes to a short digest that is stored
with each execution so a worker with a different definition refuses to advance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery_saga.errors import SagaDefinitionError
from celery_saga.outline import describe
from celery_saga.plan import (
    Context,
    ContextFn,
    ContextInput,
    ContextSource,
    DictOutput,
    InputSpec,
    LiteralInput,
    LiteralSource,
    MapperInput,
    Node,
    OutputSpec,
    Source,
    StepOutputSource,
    TransformInput,
)
from celery_saga.retry import RetryPolicy

if TYPE_CHECKING:
    from celery import Celery, Task

__all__ = [
    "Context",
    "ContextFn",
    "ContextInput",
    "ContextSource",
    "DictOutput",
    "InputSpec",
    "LiteralInput",
    "LiteralSource",
    "MapperInput",
    "OutputSpec",
    "SagaDefinition",
    "Source",
    "Stage",
    "StepOutputSource",
    "StepSpec",
    "TransformInput",
]

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
    #: "task", "external" or "saga" (a `StepKind` value).
    kind: str = "task"
    #: Run only if ``when(context)`` is true; otherwise the step is SKIPPED.
    when: ContextFn | None = field(default=None, compare=False)
    #: An external step's time limit in seconds (None: it waits as long as it takes).
    timeout: float | None = None
    #: A saga step's child saga (a `celery_saga.Saga`).
    child: Any = field(default=None, compare=False)

    @property
    def by_name(self) -> bool:
        """True when the step was given as a task name (bookkeeping by reply message)."""
        return self.task is None

    @property
    def compensated(self) -> bool:
        """True when this step has a compensation to run."""
        if self.kind == "saga":
            return not self.no_compensation
        return self.compensation_name is not None and not self.no_compensation

    @property
    def is_task(self) -> bool:
        """True for a step that a Celery task message carries out."""
        return self.kind == "task"


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
    #: The plan tree the stages were compiled from.
    plan: tuple[Node, ...] = field(default=(), compare=False)

    @cached_property
    def steps(self) -> tuple[StepSpec, ...]:
        """Every step, in plan order (built once: every step message asks)."""
        return tuple(step for stage in self.stages for step in stage.steps)

    @cached_property
    def _by_index(self) -> dict[int, StepSpec]:
        return {spec.index: spec for spec in self.steps}

    def step(self, index: int) -> StepSpec:
        """The step at plan position `index` (a lookup, whatever the saga's length)."""
        spec = self._by_index.get(index)
        if spec is None:
            raise SagaDefinitionError(f"saga {self.name!r} has no step {index}")
        return spec

    def describe(self) -> list[Any]:
        """A JSON-able outline of the plan: what the hash covers."""
        return describe(self.plan, self.output)

    @property
    def hash(self) -> str:
        """Short digest of `describe()`; stored with every execution."""
        cached: str | None = self.__dict__.get("_hash")
        if cached is None:
            raw = json.dumps([self.name, self.describe()], sort_keys=True, default=str)
            cached = hashlib.sha256(raw.encode()).hexdigest()[:16]
            object.__setattr__(self, "_hash", cached)
        return cached
