"""`Saga`: the builder API, and the object both APIs hand back to run a saga."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery_saga import registry, uncompensated
from celery_saga.decorators import step_meta
from celery_saga.definition import SagaDefinition
from celery_saga.errors import SagaDefinitionError
from celery_saga.graphs import definition_graph, to_dot, to_mermaid
from celery_saga.outline import outline
from celery_saga.plan import (
    ContextInput,
    InputSpec,
    MapperInput,
    Node,
    OutputSpec,
    Parallel,
    Step,
    SubSaga,
    Transform,
    When,
    all_leaves,
    leaves,
)
from celery_saga.retry import RetryPolicy
from celery_saga.staging import compile_plan
from celery_saga.tasks import check_task_ref, is_task, task_name

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


#: The plan nodes under the names the builder used before the plan tree.
StepEntry = Step
ParallelEntry = Parallel
TransformEntry = Transform
Entry = Node


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
) -> Step:
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
    return Step(
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
        when: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Saga:
        """Add a step: a Celery task (or task name) called with the context as kwargs.

        `compensate` overrides the one from `@saga_step`; `input` maps the context
        to the step's keyword arguments; `options` are Celery message options for
        this step only (queue, priority, countdown, time_limit, soft_time_limit...);
        `retry` and `compensation_retry` are saga-level `RetryPolicy` objects. With
        `when`, the step runs only if ``when(context)`` is true (else it is SKIPPED).
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
        return self._append(_conditional(entry, when, what))

    def add_saga(
        self,
        child: Saga,
        *,
        input: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        compensate: bool = True,
        when: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Saga:
        """Add a child saga as one step: its own execution, linked to this one.

        The step succeeds with the child's output when the child completes, and fails
        when it compensates. With `compensate`, a completed child is compensated as a
        whole (reverted) when this saga compensates.
        """
        what = f"step {len(self._flat_steps())} of saga {self.name!r}"
        node = make_subsaga(self, child, input=_mapper(input, what), compensate=compensate)
        return self._append(_conditional(node, when, what))

    def add_external(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        compensate: Any = None,
        input: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        when: Callable[[dict[str, Any]], Any] | None = None,
        no_compensation: bool = False,
    ) -> Saga:
        """Add a step completed from outside: a webhook, a person, another system.

        The saga waits, holding no worker, until `SagaResult.complete_step(name,
        output)` or `fail_step(name, error)` is called (or `celery saga complete` /
        `fail`). Past `timeout` the step fails and the saga compensates (the recovery
        pass notices: schedule it). `compensate` undoes a completed step, called with
        its output; ``no_compensation=True`` says there is nothing to undo (an approval).
        """
        what = f"external step {name!r} of saga {self.name!r}"
        node = make_external(
            name,
            timeout=timeout,
            compensate=compensate,
            what=what,
            no_compensation=no_compensation,
        )
        if input is not None:
            node.input = _mapper(input, what) or node.input
        return self._append(_conditional(node, when, what))

    def add_parallel(
        self,
        *tasks_or_tuples: Any,
        input: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        retry: RetryPolicy | None = None,
        when: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Saga:
        """Add steps that run at the same time; each is a task, a (task, compensate) pair,
        or a child `Saga`.

        The saga moves on when all have finished; if one fails for good, the others
        finish first and then everything done so far is compensated. With `when`, the
        whole group runs only if ``when(context)`` is true.
        """
        if not tasks_or_tuples:
            raise SagaDefinitionError(
                f"add_parallel() on saga {self.name!r} needs at least one task"
            )
        what = f"parallel group {len(self._entries)} of saga {self.name!r}"
        mapper = _mapper(input, what)
        members: list[Step | SubSaga] = []
        for item in tasks_or_tuples:
            if isinstance(item, Saga):
                members.append(make_subsaga(self, item, input=mapper))
                continue
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise SagaDefinitionError(
                        f"{what}: a tuple must be (task, compensate), got {len(item)} items"
                    )
                task, comp = item
            else:
                task, comp = item, None
            members.append(
                make_step_entry(task, compensate=comp, input=mapper, retry=retry, what=what)
            )
        return self._append(_conditional(Parallel(members), when, what))

    def add_transform(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Saga:
        """Replace the context with ``fn(context)`` at this point of the plan."""
        if not callable(fn):
            raise SagaDefinitionError(
                f"add_transform() on saga {self.name!r} needs a callable, got {type(fn).__name__}"
            )
        return self._append(Transform(fn))

    def _append(self, entry: Node) -> Saga:
        self._entries.append(entry)
        self._definition = None
        self._instrument(entry)
        registry.register(self)
        return self

    def _instrument(self, entry: Node) -> None:
        """Instrument the new entry's tasks; warn once about a step nothing would undo."""
        flat = self._flat_steps()
        for step in leaves(entry):
            if isinstance(step, Step):
                for ref in (step.task, step.compensate):
                    if ref is not None and is_task(ref):
                        registry.task_added(ref)
                index = next(i for i, s in enumerate(flat) if s is step)
                uncompensated.check(self.name, index, step)

    # -- the compiled definition -----------------------------------------------------------
    def _flat_steps(self) -> list[Step | SubSaga]:
        return all_leaves(self._entries)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The plan tree as built so far (`celery_saga.plan` nodes)."""
        return tuple(self._entries)

    def contains(self, other: Saga) -> bool:
        """Whether `other` is this saga or a child of it, at any depth."""
        if other is self:
            return True
        return any(
            isinstance(leaf, SubSaga) and isinstance(leaf.saga, Saga) and leaf.saga.contains(other)
            for leaf in self._flat_steps()
        )

    @property
    def app(self) -> Celery:
        """The Celery app this saga dispatches on (given, or that of its first task)."""
        if self._app is not None:
            return self._app
        for step in self._flat_steps():
            if isinstance(step, SubSaga):
                return step.saga.app
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
        return compile_plan(
            self.name,
            self._entries,
            app=self.app,
            output=self._output,
            deadline=self.deadline,
        )

    def outline(self) -> list[Any]:
        """The plan so far, as plain data (used to spot two sagas sharing a name)."""
        return outline(self._entries, self._output is not None)

    def to_mermaid(self) -> str:
        """The plan as a Mermaid flowchart (paste it into any Mermaid viewer).

        Stages top to bottom, parallel members side by side, compensations as dashed
        edges back up; see `celery_saga.graphs`.
        """
        return to_mermaid(definition_graph(self))

    #: The same as `to_mermaid` (its first name).
    mermaid = to_mermaid

    def to_dot(self) -> str:
        """The plan as Graphviz DOT (``dot -Tsvg``); see `celery_saga.graphs`."""
        return to_dot(definition_graph(self))

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

    async def arun(
        self,
        *,
        idempotency_key: str | None = None,
        queue: str | None = None,
        **input: Any,
    ) -> SagaResult:
        """`run` for asyncio: the store write and the broker send happen in a thread.

        Same arguments and result as `run`; the event loop is never blocked. Await
        the outcome with `SagaResult.aget`, follow it with `SagaResult.watch`.
        """
        from celery_saga.offload import run_blocking

        start = functools.partial(self.run, idempotency_key=idempotency_key, queue=queue, **input)
        result: SagaResult = await run_blocking(start)
        return result

    def result(self, saga_id: str) -> SagaResult:
        """A handle to an existing execution of this saga."""
        result: SagaResult = registry.launcher().handle(self, saga_id)
        return result

    def __repr__(self) -> str:
        return f"<Saga {self.name!r}: {len(self._flat_steps())} steps>"


def _conditional(
    node: Step | SubSaga | Parallel, when: Any, what: str
) -> Step | SubSaga | Parallel | When:
    """`node`, or `node` under a condition when `when` is given."""
    if when is None:
        return node
    if not callable(when):
        raise SagaDefinitionError(
            f"{what}: when= must be a callable taking the context dict, got {type(when).__name__}"
        )
    return When(when, node)


def make_subsaga(
    parent: Saga, child: Any, *, input: InputSpec | None = None, compensate: bool = True
) -> SubSaga:
    """A child saga step of `parent`; a child that contains `parent` is refused."""
    if not isinstance(child, Saga):
        raise SagaDefinitionError(
            f"saga {parent.name!r}: add_saga() takes a Saga (Saga(name)... or a @saga "
            f"function), got {type(child).__name__}"
        )
    if child.contains(parent):
        raise SagaDefinitionError(
            f"saga {parent.name!r} cannot contain saga {child.name!r}: "
            + (
                "a saga cannot be its own step"
                if child is parent
                else f"{child.name!r} already contains {parent.name!r}, so the plan would never end"
            )
        )
    return SubSaga(child, input=input or ContextInput(), compensate=bool(compensate))


def make_external(
    name: Any,
    *,
    timeout: float | timedelta | None,
    compensate: Any,
    what: str,
    no_compensation: bool = False,
) -> Step:
    """An external step named `name`, waiting at most `timeout` (seconds or a timedelta)."""
    if not isinstance(name, str) or not name.strip():
        raise SagaDefinitionError(f"{what}: an external step needs a non-empty name")
    seconds: float | None = None
    if timeout is not None:
        total = getattr(timeout, "total_seconds", None)
        value = total() if callable(total) else timeout
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SagaDefinitionError(
                f"{what}: timeout must be a positive number of seconds or a timedelta, "
                f"got {timeout!r}"
            )
        seconds = float(value)
    comp = check_task_ref(compensate, f"compensate of {name!r}") if compensate else None
    return Step(
        task=name,
        compensate=comp,
        external=True,
        timeout=seconds,
        no_compensation=bool(no_compensation),
    )


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
