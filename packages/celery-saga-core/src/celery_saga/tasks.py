"""Recognise and name Celery tasks given as objects or as task names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from celery_saga.errors import SagaDefinitionError

if TYPE_CHECKING:
    from celery import Task

TaskRef = Union["Task", str]


def is_task(obj: Any) -> bool:
    """True for a Celery task object (lazy task proxies included)."""
    from celery import Task

    try:
        return isinstance(obj, Task)
    except Exception:  # a lazy proxy that cannot be evaluated
        return False


def resolve_task(obj: Any) -> Task:
    """Evaluate a lazy task proxy to the task object it stands for."""
    getter = getattr(obj, "_get_current_object", None)
    task: Task = getter() if callable(getter) else obj
    return task


def check_task_ref(obj: Any, what: str) -> TaskRef:
    """Accept a Celery task or a task name; anything else is a definition error."""
    if isinstance(obj, str):
        if not obj.strip():
            raise SagaDefinitionError(f"{what}: a task name must not be empty")
        return obj
    if is_task(obj):
        return resolve_task(obj)
    kind = type(obj).__name__
    hint = ""
    if callable(obj):
        hint = (
            f" {getattr(obj, '__qualname__', obj)!r} is a plain function: decorate it with "
            "@app.task (or @saga_task(app)) first"
        )
    raise SagaDefinitionError(
        f"{what} must be a Celery task or a task name (str), got {kind}.{hint}"
    )


def task_name(ref: TaskRef) -> str:
    """The registered name of a task given as object or name."""
    return ref if isinstance(ref, str) else str(ref.name)
