"""The plan tree: what a saga does, as the user wrote it, before indexes and stages.

A plan is a sequence of nodes: `Step` (a Celery task, or an external step completed
from outside), `Parallel` (members that run at the same time), `Transform` (a context
transform at its place), `SubSaga` (a child saga run as one step) and `When` (a node
that runs only if a predicate of the context holds). Every consumer of a plan (the
stage compiler, the outline, the definition hash, the graph export) walks it with
`visit`, the one place that dispatches on the node kind: a new kind is added here,
and the type checker then points at each visitor that must learn it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from celery_saga.retry import RetryPolicy

if TYPE_CHECKING:
    from celery_saga.tasks import TaskRef


class ChildSaga(Protocol):
    """What the plan needs of a child saga (a `celery_saga.Saga`)."""

    name: str

    @property
    def app(self) -> Any: ...


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

# -- the nodes --------------------------------------------------------------------------


@dataclass(eq=False)
class Step:
    """A step: a Celery task (object or name) and its compensation.

    With `external`, no task runs: `task` is the step's name, and the outcome comes
    from `SagaResult.complete_step` / `fail_step` (or the CLI) within `timeout` seconds.
    """

    task: TaskRef
    compensate: TaskRef | None = None
    no_compensation: bool = False
    input: InputSpec = field(default_factory=ContextInput)
    options: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    compensation_retry: RetryPolicy | None = None
    external: bool = False
    timeout: float | None = None


@dataclass(eq=False)
class SubSaga:
    """A child saga run as one step: its own execution, linked to this step.

    With `compensate`, a completed child is compensated as a whole (reverted) when
    the parent compensates.
    """

    saga: ChildSaga
    input: InputSpec = field(default_factory=ContextInput)
    compensate: bool = True


@dataclass(eq=False)
class When:
    """`node` runs only if ``predicate(context)`` is true; otherwise it is SKIPPED."""

    predicate: ContextFn
    node: Step | SubSaga | Parallel


@dataclass(eq=False)
class Parallel:
    """Members that start together; the saga goes on when all have finished."""

    members: list[Step | SubSaga]


@dataclass(eq=False)
class Transform:
    """Replace the context with ``fn(context)`` at this place in the plan."""

    fn: ContextFn


Node = Step | SubSaga | When | Parallel | Transform
#: A node that occupies a stage (everything but a transform).
StageNode = Step | SubSaga | When | Parallel

T = TypeVar("T")


class PlanVisitor(Protocol[T]):
    """What each consumer of a plan does with each kind of node."""

    def step(self, node: Step) -> T: ...

    def subsaga(self, node: SubSaga) -> T: ...

    def parallel(self, node: Parallel, members: list[T]) -> T: ...

    def transform(self, node: Transform) -> T: ...

    def when(self, node: When, inner: T) -> T: ...


def visit(node: Node, visitor: PlanVisitor[T]) -> T:
    """Walk `node` (children first) with `visitor`: the one dispatch on node kinds."""
    if isinstance(node, Step):
        return visitor.step(node)
    if isinstance(node, SubSaga):
        return visitor.subsaga(node)
    if isinstance(node, When):
        return visitor.when(node, visit(node.node, visitor))
    if isinstance(node, Parallel):
        return visitor.parallel(node, [visit(m, visitor) for m in node.members])
    if isinstance(node, Transform):
        return visitor.transform(node)
    raise TypeError(f"not a plan node: {type(node).__name__}")


def leaves(node: Node) -> list[Step | SubSaga]:
    """The steps of `node` (its own, a group's members, a condition's), in plan order."""
    if isinstance(node, Step | SubSaga):
        return [node]
    if isinstance(node, When):
        return leaves(node.node)
    if isinstance(node, Parallel):
        return [leaf for m in node.members for leaf in leaves(m)]
    return []


def all_leaves(plan: Sequence[Node]) -> list[Step | SubSaga]:
    """Every step of a plan, in plan order (the order of their indexes)."""
    return [leaf for node in plan for leaf in leaves(node)]


def callable_id(fn: Callable[..., Any] | None) -> str | None:
    """A callable's stable name (module and qualified name), for outlines and hashes."""
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def source_id(source: Source) -> Any:
    """A transform source as plain data."""
    if isinstance(source, StepOutputSource):
        return ["step", source.index]
    if isinstance(source, LiteralSource):
        return ["literal", source.value]
    return ["context"]


def input_id(spec: InputSpec) -> Any:
    """Where a step's input comes from, as plain data."""
    if isinstance(spec, MapperInput):
        return ["mapper", callable_id(spec.fn)]
    if isinstance(spec, LiteralInput):
        return ["literal", dict(spec.value)]
    if isinstance(spec, TransformInput):
        return ["transform", [source_id(s) for s in spec.sources], callable_id(spec.fn)]
    return ["context"]


def output_id(spec: OutputSpec | None) -> Any:
    """What a functional saga returns, as plain data."""
    if spec is None:
        return None
    if isinstance(spec, DictOutput):
        return ["dict", [[k, output_id(v)] for k, v in spec.items]]
    if isinstance(spec, TransformInput):
        return input_id(spec)
    return source_id(spec)
