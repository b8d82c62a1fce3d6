"""The functional API: ``@saga`` traces a function once into the builder's definition.

Inside the function, `input` and the values `step()` returns are references, not
data: they say where a later step's input comes from. The function runs once, at
definition; what it returns says what `SagaResult.get()` gives back.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery_saga.builder import Saga, make_external, make_step_entry, make_subsaga
from celery_saga.definition import (
    ContextInput,
    ContextSource,
    DictOutput,
    InputSpec,
    LiteralInput,
    LiteralSource,
    MapperInput,
    OutputSpec,
    Source,
    StepOutputSource,
    TransformInput,
)
from celery_saga.errors import SagaDefinitionError
from celery_saga.plan import Parallel, Step, SubSaga, When
from celery_saga.retry import RetryPolicy

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend


class _Ref:
    """Base of the placeholders a saga function handles while it is traced."""

    def _misuse(self, *_: Any, **__: Any) -> Any:
        raise SagaDefinitionError(
            "inside a @saga function, `input` and step results are references, not data: "
            "pass them to step() or transform(), and do any computation in a transform "
            "function or a task"
        )

    __getitem__ = __iter__ = __len__ = __contains__ = _misuse

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._misuse()


class InputRef(_Ref):
    """The saga context (the `input` argument of a @saga function)."""

    def __repr__(self) -> str:
        return "<saga input>"

    def __bool__(self) -> bool:
        return True


@dataclass(eq=False)
class StepRef(_Ref):
    """A step's output; as a step's input it stands for the context, as in 0.1."""

    index: int
    entry: Step | SubSaga = field(repr=False)

    def __bool__(self) -> bool:
        return True


@dataclass(eq=False)
class TransformRef(_Ref):
    """``fn(*sources)`` computed when needed (or the sources merged when fn is None)."""

    sources: tuple[Any, ...]
    fn: Callable[..., Any] | None = None

    def __bool__(self) -> bool:
        return True


@dataclass(eq=False)
class ParallelRef:
    """Steps run at the same time; unpacks into their StepRefs."""

    refs: list[StepRef]

    def __iter__(self) -> Iterator[StepRef]:
        return iter(self.refs)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> StepRef:
        return self.refs[i]


@dataclass
class _Trace:
    entries: list[Step | SubSaga | Parallel | When] = field(default_factory=list)
    name: str = ""
    count: int = 0


_current: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar(
    "celery_saga_trace", default=None
)


def _trace(what: str) -> _Trace:
    trace = _current.get()
    if trace is None:
        raise SagaDefinitionError(
            f"{what}() is only valid inside a function decorated with @saga(name); "
            "for a saga built step by step use Saga(name).add_step(...)"
        )
    return trace


def _source(value: Any) -> Source:
    if isinstance(value, StepRef):
        return StepOutputSource(value.index)
    if isinstance(value, InputRef):
        return ContextSource()
    if isinstance(value, dict) and not value:
        return ContextSource()
    if isinstance(value, _Ref | ParallelRef):
        raise SagaDefinitionError(
            "transform() sources must be step results, `input` or plain values, "
            f"not {type(value).__name__}"
        )
    return LiteralSource(value)


def _input_spec(ref: Any, input_fn: Callable[..., Any] | None) -> InputSpec:
    if input_fn is not None:
        if not callable(input_fn):
            raise SagaDefinitionError("step(input_fn=...) must be a callable taking the context")
        return MapperInput(input_fn)
    if ref is None or isinstance(ref, InputRef | StepRef):
        return ContextInput()
    if isinstance(ref, TransformRef):
        return TransformInput(tuple(_source(s) for s in ref.sources), ref.fn)
    if isinstance(ref, Mapping):
        return ContextInput() if not ref else LiteralInput(dict(ref))
    raise SagaDefinitionError(
        f"step input must be `input`, a step result, a transform() or a dict, "
        f"got {type(ref).__name__}"
    )


def step(
    task: Any,
    input_ref: Any = None,
    *,
    compensate: Any = None,
    no_compensation: bool = False,
    input_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    retry: RetryPolicy | None = None,
    compensation_retry: RetryPolicy | None = None,
) -> StepRef:
    """Inside a @saga function: add a step and return a reference to its output.

    `input_ref` is `input` or a step result (the step gets the context, as in the
    builder), a `transform(...)` (the step gets its value), or a literal dict. A
    `Saga` as `task` is a child saga run as one step (its output is the step's).
    """
    trace = _trace("step")
    entry: Step | SubSaga
    if isinstance(task, Saga):
        if task.name == trace.name:
            raise SagaDefinitionError(f"saga {trace.name!r} cannot be a step of itself")
        holder = Saga(trace.name or "?")
        entry = make_subsaga(
            holder,
            task,
            input=_input_spec(input_ref, input_fn),
            compensate=not no_compensation,
        )
    else:
        entry = make_step_entry(
            task,
            compensate=compensate,
            no_compensation=no_compensation,
            input=_input_spec(input_ref, input_fn),
            retry=retry,
            compensation_retry=compensation_retry,
            what=f"step {trace.count}",
        )
    return _add(trace, entry)


def _add(trace: _Trace, entry: Step | SubSaga) -> StepRef:
    ref = StepRef(trace.count, entry)
    trace.count += 1
    trace.entries.append(entry)
    return ref


def external(
    name: str,
    input_ref: Any = None,
    *,
    timeout: float | timedelta | None = None,
    compensate: Any = None,
    no_compensation: bool = False,
) -> StepRef:
    """Inside a @saga function: a step completed from outside (see `Saga.add_external`)."""
    trace = _trace("external")
    entry = make_external(
        name,
        timeout=timeout,
        compensate=compensate,
        what=f"external step {name!r}",
        no_compensation=no_compensation,
    )
    entry.input = _input_spec(input_ref, None)
    return _add(trace, entry)


def when(ref: Any, predicate: Any) -> Any:
    """Inside a @saga function: run the step (or parallelize group) `ref` only if
    ``predicate(context)`` is true; otherwise it is SKIPPED. Returns `ref`.

    Write it around the step: ``gift = when(step(wrap, input), lambda ctx: ctx["gift"])``.
    """
    trace = _trace("when")
    if not callable(predicate):
        raise SagaDefinitionError("when() needs a callable taking the context as its predicate")
    if isinstance(ref, StepRef):
        target: Any = ref.entry
    elif isinstance(ref, ParallelRef) and ref.refs:
        target = next(
            (
                e
                for e in trace.entries
                if isinstance(e, Parallel) and ref.refs[0].entry in e.members
            ),
            None,
        )
    else:
        target = None
    if (
        trace.entries
        and isinstance(target, Step | SubSaga | Parallel)
        and trace.entries[-1] is target
    ):
        trace.entries[-1] = When(predicate, target)
        return ref
    raise SagaDefinitionError(
        "when() must wrap the step() or parallelize() call just made, in its own "
        "arguments: when(step(task, input), predicate)"
    )


def transform(sources: Any, transform_fn: Callable[..., Any] | None = None) -> TransformRef:
    """A value computed from step results: ``transform_fn(*sources)``.

    Without `transform_fn` the sources' dicts are merged. `sources` is one
    reference or a tuple of them.
    """
    if transform_fn is not None and not callable(transform_fn):
        raise SagaDefinitionError("transform() needs a callable as its second argument")
    items = sources if isinstance(sources, tuple) else (sources,)
    for item in items:
        _source(item)  # validate now, at definition time
    return TransformRef(tuple(items), transform_fn)


def parallelize(*step_refs: StepRef) -> ParallelRef:
    """Inside a @saga function: run the given steps at the same time.

    Write the step() calls as the arguments: ``a, b = parallelize(step(x, o), step(y, o))``.
    """
    trace = _trace("parallelize")
    if not step_refs or not all(isinstance(r, StepRef) for r in step_refs):
        raise SagaDefinitionError("parallelize() takes the results of step() calls")
    entries = [r.entry for r in step_refs]
    tail = trace.entries[-len(entries) :]
    if any(isinstance(e, When) for e in tail):
        raise SagaDefinitionError(
            "a step inside parallelize() cannot have its own when(): put when() around "
            "the parallelize() call"
        )
    if [id(e) for e in tail] != [id(e) for e in entries]:
        raise SagaDefinitionError(
            "parallelize() must wrap step() calls made in its own arguments, in order: "
            "parallelize(step(a, x), step(b, x))"
        )
    members = {r.index for r in step_refs}
    for ref in step_refs:
        spec = ref.entry.input
        if isinstance(spec, TransformInput) and any(
            isinstance(s, StepOutputSource) and s.index in members for s in spec.sources
        ):
            raise SagaDefinitionError(
                "a step inside parallelize() cannot take its input from another step of the "
                "same group: they run at the same time"
            )
    del trace.entries[-len(entries) :]
    trace.entries.append(Parallel(entries))
    return ParallelRef(list(step_refs))


def _output_spec(value: Any) -> OutputSpec:
    if value is None or isinstance(value, InputRef):
        return ContextSource()
    if isinstance(value, StepRef):
        return StepOutputSource(value.index)
    if isinstance(value, TransformRef):
        return TransformInput(tuple(_source(s) for s in value.sources), value.fn)
    if isinstance(value, ParallelRef):
        return DictOutput(tuple((str(i), StepOutputSource(r.index)) for i, r in enumerate(value)))
    if isinstance(value, Mapping):
        return DictOutput(tuple((str(k), _output_spec(v)) for k, v in value.items()))
    return LiteralSource(value)


def saga(
    name: str,
    backend: SagaBackend | str | None = None,
    *,
    app: Celery | None = None,
    deadline: float | timedelta | None = None,
) -> Callable[[Callable[[Any], Any]], Saga]:
    """Define a saga from a function of `input`, traced once into a `Saga`.

    `deadline` (seconds, or a timedelta) makes an execution compensate when it has
    not completed that long after it started.
    """

    def decorator(fn: Callable[[Any], Any]) -> Saga:
        trace = _Trace(name=name)
        token = _current.set(trace)
        try:
            returned = fn(InputRef())
        finally:
            _current.reset(token)
        result = Saga(name, backend=backend, app=app, deadline=deadline)
        result.defined_in = f"{fn.__module__}.{fn.__qualname__}"
        result._output = _output_spec(returned)
        for entry in trace.entries:
            result._entries.append(entry)
            result._instrument(entry)
        result._definition = None
        result.definition  # noqa: B018 - compile now: definition errors surface here
        from celery_saga import registry

        registry.register(result)
        result.__doc__ = fn.__doc__
        return result

    return decorator
