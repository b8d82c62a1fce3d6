"""`saga_step` and `saga_task`: attach a compensation to a Celery task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from celery_saga import registry
from celery_saga.tasks import TaskRef, check_task_ref, is_task

if TYPE_CHECKING:
    from celery import Celery

T = TypeVar("T")

#: Attribute that carries the metadata on the task (the name celery-saga 0.1 used).
SAGA_STEP_ATTR = "_saga_step_meta"


@dataclass(frozen=True)
class SagaStepMeta:
    """What `@saga_step` recorded on a task."""

    compensate: TaskRef | None = None
    no_compensation: bool = False


def saga_step(compensate: TaskRef | None = None, no_compensation: bool = False) -> Callable[[T], T]:
    """Mark a Celery task as a saga step with the given compensation.

    Put it above ``@app.task``. `compensate` is a task or a task name; the
    compensation is called with the step's compensation data as its argument.
    ``no_compensation=True`` says the step has nothing to undo.
    """
    if compensate is not None:
        check_task_ref(compensate, "compensate")

    def decorator(task: T) -> T:
        meta = SagaStepMeta(compensate=compensate, no_compensation=no_compensation)
        target: Any = task
        setattr(target, SAGA_STEP_ATTR, meta)
        if is_task(target):
            registry.task_added(target)
        return task

    return decorator


def saga_task(
    app: Celery,
    *,
    compensate: TaskRef | None = None,
    no_compensation: bool = False,
    name: str | None = None,
    **task_options: Any,
) -> Callable[[Callable[..., Any]], Any]:
    """``@app.task`` and ``@saga_step`` in one decorator.

    The task name defaults to the function's qualified name, as in celery-saga 0.1;
    other keyword arguments are Celery task options (queue, retries, time limits).
    """

    def decorator(fn: Callable[..., Any]) -> Any:
        task = app.task(name=name or fn.__qualname__, **task_options)(fn)
        return saga_step(compensate=compensate, no_compensation=no_compensation)(task)

    return decorator


def step_meta(task: Any) -> SagaStepMeta:
    """The metadata `@saga_step` put on a task (or on its function), or the default."""
    for holder in (task, getattr(task, "run", None)):
        meta = getattr(holder, SAGA_STEP_ATTR, None) if holder is not None else None
        if isinstance(meta, SagaStepMeta):
            return meta
    return SagaStepMeta()
