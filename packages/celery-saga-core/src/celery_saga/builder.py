"""`Saga`: the builder API, and the object both APIs hand back to run a saga."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery_saga import registry
from celery_saga.decorators import step_meta
from celery_saga.definition import (
    ContextFn,
    ContextInput,
    InputSpec,
    MapperInput,
    OutputSpec,
    SagaDefinition,
    Stage,
    StepSpec,
)
from celery_saga.errors import SagaDefinitionError
from celery_saga.retry import RetryPolicy
from celery_saga.tasks import TaskRef, check_task_ref, is_task, task_name

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend
    from celery_saga.result import SagaResult

#: Options a step may set for its own Celery message (the rest are refused).
STEP_OPTIONS = frozenset(
    {
        "queue",
        "routing_key",
        "exchange",
        "priority",
        "countdown",
        "expires",
        "time_limit",
        "soft_time_limit",
        "serializer",
        "compression",
    }
)


@dataclass
class StepEntry:
    """A step as the user gave it, before indexes are assigned."""

    task: TaskRef
    compensate: TaskRef | None
    no_compensation: bool
    input: InputSpec = field(default_factory=ContextInput)
    options: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    compensation_retry: RetryPolicy | None = None


@dataclass
class ParallelEntry:
    """Steps that run at the same time."""

    steps: list[StepEntry]


@dataclass
class TransformEntry:
    """A context transform applied at its place in the plan."""

    fn: ContextFn


Entry = StepEntry | ParallelEntry | TransformEntry


def make_step_entry(
    task: Any,
    *,
    compensate: Any = None,
    no_compensation: bool = False,
    input: InputSpec | None = None,
    options: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    compensation_retry: RetryPolicy | None = None,
    what: str = "step",
) -> StepEntry:
    """Validate a step and merge in what `@saga_step` said about it."""
    ref = check_task_ref(task, what)
    meta = step_meta(ref) if not isinstance(ref, str) else step_meta(None)
    comp = compensate if compensate is not None else meta.compensate
    comp_ref = check_task_ref(comp, f"compensate of {task_name(ref)!r}") if comp else None
    if options:
        unknown = set(options) - STEP_OPTIONS
        if unknown:
            raise SagaDefinitionError(
                f"step {task_name(ref)!r}: unknown options {sorted(unknown)}; "
                f"allowed: {sorted(STEP_OPTIONS)}"
            )
    for name, policy in (("retry", retry), ("compensation_retry", compensation_retry)):
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise SagaDefinitionError(
                f"step {task_name(ref)!r}: {name} must be a RetryPolicy, "
                f"got {type(policy).__name__}"
            )
    return StepEntry(
        task=ref,
        compensate=comp_ref,
        no_compensation=bool(no_compensation or meta.no_compensation),
        input=input or ContextInput(),
        options=dict(options or {}),
        retry=retry,
        compensation_retry=compensation_retry,
    )


def _mapper(fn: Any, what: str) -> InputSpec | None:
    if fn is None:
        return None
    if not callable(fn):
        raise SagaDefinitionError(
            f"{what}: input must be a callable taking the context dict, got {type(fn).__name__}"
        )
    return MapperInput(fn)


class Saga:
    """A saga: a named plan of Celery task steps, each with a compensation.

    Build it with `add_step`, `add_parallel` and `add_transform` (each returns the
    saga, so calls chain), or with the `@saga` decorator; then `run(**input)`.
    Sagas register by name when defined, so workers that import the defining
    module can carry them forward.
    """

    def __init__(
        self,
        name: str,
        backend: SagaBackend | str | None = None,
        *,
        app: Celery | None = None,
        deadline: float | timedelta | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise SagaDefinitionError(f"a saga needs a non-empty name, got {name!r}")
        if deadline is not None:
            total = getattr(deadline, "total_seconds", None)
            deadline = total() if callable(total) else deadline
            if not isinstance(deadline, int | float) or deadline <= 0:
                raise SagaDefinitionError(
                    f"saga {name!r}: deadline must be a positive number of seconds (or a "
                    f"timedelta), got {deadline!r}"
                )
        self.name = name
        self.backend = backend
        self.deadline: float | None = None if deadline is None else float(deadline)
        self._app = app
        self._entries: list[Entry] = []
        self._output: OutputSpec | None = None
        self._definition: SagaDefinition | None = None
        self.defined_in = _caller()

    # -- builder ---------------------------------------------------------------------------
    def add_step(
        self,
        task: Any,
        *,
        compensate: Any = None,
        no_compensation: bool = False,
        input: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
    ) -> Saga:
        """Add a step: a Celery task (or task name) called with the context as kwargs.

        `compensate` overrides the one from `@saga_step`; `input` maps the context
        to the step's keyword arguments; `options` are Celery message options for
        this step only (queue, priority, countdown, time_limit, soft_time_limit...);
        `retry` and `compensation_retry` are saga-level `RetryPolicy` objects.
        """
        what = f"step {len(self._flat_steps())} of saga {self.name!r}"
        entry = make_step_entry(
            task,
            compensate=compensate,
            no_compensation=no_compensation,
            input=_mapper(input, what),
            options=options,
            retry=retry,
            compensation_retry=compensation_retry,
            what=what,
        )
        return self._append(entry)

    def add_parallel(
        self,
        *tasks_or_tuples: Any,
        input: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        retry: RetryPolicy | None = None,
    ) -> Saga:
        """Add steps that run at the same time; each is a task or a (task, compensate) pair.

        The saga moves on when all have finished; if one fails for good, the others
        finish first and then everything done so far is compensated.
        """
        if not tasks_or_tuples:
            raise SagaDefinitionError(
                f"add_parallel() on saga {self.name!r} needs at least one task"
            )
        what = f"parallel group {len(self._entries)} of saga {self.name!r}"
        mapper = _mapper(input, what)
        steps = []
        for item in tasks_or_tuples:
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise SagaDefinitionError(
                        f"{what}: a tuple must be (task, compensate), got {len(item)} items"
                    )
                task, comp = item
            else:
                task, comp = item, None
            steps.append(
                make_step_entry(task, compensate=comp, input=mapper, retry=retry, what=what)
            )
        return self._append(ParallelEntry(steps))

    def add_transform(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Saga:
        """Replace the context with ``fn(context)`` at this point of the plan."""
        if not callable(fn):
            raise SagaDefinitionError(
                f"add_transform() on saga {self.name!r} needs a callable, got {type(fn).__name__}"
            )
        return self._append(TransformEntry(fn))

    def _append(self, entry: Entry) -> Saga:
        self._entries.append(entry)
        self._definition = None
        self._instrument(entry)
        registry.register(self)
        return self

    def _instrument(self, entry: Entry) -> None:
        for step in entry.steps if isinstance(entry, ParallelEntry) else [entry]:
            if isinstance(step, StepEntry):
                for ref in (step.task, step.compensate):
                    if ref is not None and is_task(ref):
                        registry.task_added(ref)

    # -- the compiled definition -----------------------------------------------------------
    def _flat_steps(self) -> list[StepEntry]:
        flat: list[StepEntry] = []
        for entry in self._entries:
            if isinstance(entry, StepEntry):
                flat.append(entry)
            elif isinstance(entry, ParallelEntry):
                flat.extend(entry.steps)
        return flat

    @property
    def app(self) -> Celery:
        """The Celery app this saga dispatches on (given, or that of its first task)."""
        if self._app is not None:
            return self._app
        for step in self._flat_steps():
            for ref in (step.task, step.compensate):
                if ref is not None and not isinstance(ref, str):
                    app: Celery = ref._get_app()
                    return app
        from celery import current_app

        fallback: Celery = current_app._get_current_object()
        return fallback

    @property
    def definition(self) -> SagaDefinition:
        """The compiled, immutable definition (stages, specs, hash)."""
        if self._definition is None:
            self._definition = self._compile()
        return self._definition

    #: celery-saga 0.1 called it `plan`.
    plan = definition

    @property
    def sealed(self) -> bool:
        """True when the definition is complete (functional sagas are)."""
        return self._output is not None

    def _compile(self) -> SagaDefinition:
        if not self._flat_steps():
            raise SagaDefinitionError(
                f"saga {self.name!r} has no steps: add one with add_step() before running it"
            )
        stages: list[Stage] = []
        pending: list[ContextFn] = []
        index = 0
        for entry in self._entries:
            if isinstance(entry, TransformEntry):
                pending.append(entry.fn)
                continue
            group = entry.steps if isinstance(entry, ParallelEntry) else [entry]
            specs = []
            for step in group:
                specs.append(
                    StepSpec(
                        index=index,
                        stage=len(stages),
                        task_name=task_name(step.task),
                        task=None if isinstance(step.task, str) else step.task,
                        compensation_name=task_name(step.compensate) if step.compensate else None,
                        compensation=(
                            None
                            if step.compensate is None or isinstance(step.compensate, str)
                            else step.compensate
                        ),
                        no_compensation=step.no_compensation,
                        input=step.input,
                        options=step.options,
                        retry=step.retry,
                        compensation_retry=step.compensation_retry,
                    )
                )
                index += 1
            stages.append(
                Stage(
                    index=len(stages),
                    steps=tuple(specs),
                    parallel=isinstance(entry, ParallelEntry),
                    transforms=tuple(pending),
                )
            )
            pending = []
        return SagaDefinition(
            name=self.name,
            stages=tuple(stages),
            app=self.app,
            final_transforms=tuple(pending),
            output=self._output,
            deadline=self.deadline,
        )

    def outline(self) -> list[Any]:
        """The plan so far, as plain data (used to spot two sagas sharing a name)."""
        outline: list[Any] = []
        for entry in self._entries:
            if isinstance(entry, TransformEntry):
                outline.append(["transform", getattr(entry.fn, "__qualname__", "?")])
            else:
                group = entry.steps if isinstance(entry, ParallelEntry) else [entry]
                outline.append(
                    [
                        "parallel" if isinstance(entry, ParallelEntry) else "step",
                        [
                            [
                                task_name(s.task),
                                task_name(s.compensate) if s.compensate else None,
                                s.no_compensation,
                            ]
                            for s in group
                        ],
                    ]
                )
        if self._output is not None:
            outline.append(["output"])
        return outline

    # -- running -------------------------------------------------------------------------------
    def run(
        self,
        *,
        idempotency_key: str | None = None,
        queue: str | None = None,
        **input: Any,
    ) -> SagaResult:
        """Start an execution with `input` as the initial context; returns at once.

        With `idempotency_key`, a second run with the same key returns the first
        execution instead of starting another. `queue` is where the saga's own
        messages go, and the queue of steps that have no route of their own.
        Safe to call from any thread: it dispatches on the saga's Celery app.
        """
        result: SagaResult = registry.launcher().run(self, input, idempotency_key, queue)
        return result

    def result(self, saga_id: str) -> SagaResult:
        """A handle to an existing execution of this saga."""
        result: SagaResult = registry.launcher().handle(self, saga_id)
        return result

    def __repr__(self) -> str:
        return f"<Saga {self.name!r}: {len(self._flat_steps())} steps>"


def _caller() -> str:
    """Where the saga was defined (first frame outside this package), for error messages."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame: Any = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(here):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"
