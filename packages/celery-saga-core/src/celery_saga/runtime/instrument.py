"""Bookkeeping in the step's own worker: a thin wrapper around a step task's call.

When a task is used as a saga step (or compensation), its class gets a
``__call__`` that, only for messages carrying a saga header, gates the attempt,
runs the body, records the outcome and dispatches what comes next, all in the
process that ran the step: one broker message per step. Calls without a saga
header go straight to the task as before.

`PermanentFailure` must never be retried: if the task auto-retries, the exception
crosses Celery's autoretry wrapper disguised as `Ignore` (which it never retries)
and is unwrapped here.

A failure the saga recorded (a step that failed for good, or that its retry policy
sends again) is logged once, by the runtime, at WARNING with the saga id. The task
still raises it, so `task_failure` receivers, errbacks and the result backend see it
as before; Celery's tracer logs it as an *expected* failure (INFO, no traceback),
because the wrapper adds `HandledFailure` to the task's `throws`.

With trace hooks set (`celery_saga.tracing`), an attempt's body and its bookkeeping run
inside the hooks' `attempt`, which is told the failure, if any.
"""

from __future__ import annotations

import functools
import logging
import time
import typing
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.app.trace import build_tracer
from celery.exceptions import Ignore, Retry
from celery.utils.objects import mro_lookup

from celery_saga import registry, tracing
from celery_saga.backends.base import Lease, StepExpect
from celery_saga.compiler import SERIALIZER
from celery_saga.errors import PermanentFailure, SagaError, StepOutputError
from celery_saga.headers import SagaHeader, header_of
from celery_saga.retry import error_types
from celery_saga.runtime import compensation, forward, leases
from celery_saga.runtime.binding import Runtime, describe_error, outcome_of
from celery_saga.runtime.bookkeeping import (
    HANDLED,
    HandledFailure,
    bookkeep,
    recorded,
)
from celery_saga.runtime.decide import Admission
from celery_saga.runtime.log import log

_MARK = "_celery_saga_instrumented"


class _PermanentShield(Ignore):  # type: ignore[misc]
    """Carries a PermanentFailure past Celery's autoretry wrapper."""

    def __init__(self, failure: PermanentFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _has_custom_call(task: Task) -> bool:
    return (
        mro_lookup(type(task), "__call__", stop={Task, object}, monkey_patched=["celery.app.task"])
        is not None
    )


def instrument(task: Task) -> None:
    """Make `task` do saga bookkeeping when it runs from a saga message (idempotent)."""
    cls = type(task)
    if cls.__dict__.get(_MARK):
        return
    had_custom = _has_custom_call(task)
    original = cls.__call__

    def __call__(self: Task, *args: Any, **kwargs: Any) -> Any:
        try:
            request = self.request_stack.top
            if request is None or getattr(request, "called_directly", True):
                return original(self, *args, **kwargs)
            # Called by a worker's tracer: call what the tracer would have called.
            body: Callable[[], Any] = (
                functools.partial(original, self, *args, **kwargs)
                if had_custom
                else functools.partial(self.run, *args, **kwargs)
            )
            header = header_of(request)
            if header is None:
                return body()
            return _run(self, request, header, body, args, kwargs)
        except _PermanentShield as shield:
            raise shield.failure from None

    functools.update_wrapper(__call__, original)
    cls.__call__ = __call__
    if isinstance(cls, type) and issubclass(cls, Task):
        _json_retries(cls)
    throws = getattr(cls, "throws", None) or ()
    throws = (throws,) if isinstance(throws, type) else tuple(throws)
    if HandledFailure not in throws:
        cls.throws = (*throws, HandledFailure)
    setattr(cls, _MARK, True)
    _shield_autoretry(task)
    if getattr(task, "__trace__", None) is not None:
        # A worker built this task's tracer before the saga was defined: rebuild it
        # so the tracer calls the wrapper.
        task.__trace__ = build_tracer(task.name, task, app=task._get_app())


def _json_retries(cls: type[Task]) -> None:
    """Keep a saga message JSON when Celery sends it again, whatever `task_serializer`.

    Covers the gate's retries and a step's own ``self.retry()`` or autoretry.
    """
    original_retry = cls.retry

    def retry(self: Task, *args: Any, **options: Any) -> Any:
        header = header_of(self.request)
        if header is not None:
            options.setdefault("serializer", SERIALIZER)
            _give_back_lease(self, header)  # before the retry message exists
        return original_retry(self, *args, **options)

    functools.update_wrapper(retry, original_retry)
    cls.retry = retry


def _give_back_lease(task: Task, header: SagaHeader) -> None:
    """A task that retries itself gives its lease back, so the retry need not wait for it.

    The retry is a new message for the same attempt; it is sent by ``retry()`` before
    the task returns, so the lease goes back first.
    """
    owner = leases.owner_of(header.task_id)
    beat = leases.heartbeat()
    mine = [lease for lease in beat.held() if lease.owner == owner]
    if not mine:
        return
    backend = Runtime.for_header(header, task._get_app()).backend
    for lease in mine:
        beat.release(lease)
        try:
            backend.update_step(
                lease.saga_id,
                lease.index,
                {"lease_owner": None, "lease_expires_at": None},
                expect=StepExpect(lease_owners=(owner,)),
            )
        except Exception as exc:  # the retry then waits for the lease to expire instead
            log(logging.WARNING, lease.saga_id, lease.index, "lease not given back: %r", exc)


def _shield_autoretry(task: Task) -> None:
    inner = getattr(task, "_orig_run", None)
    if inner is None or getattr(inner, _MARK, False):
        return

    @functools.wraps(inner)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except PermanentFailure as exc:
            raise _PermanentShield(exc) from exc

    setattr(run, _MARK, True)
    task._orig_run = run


def _run(
    task: Task,
    request: Any,
    header: SagaHeader,
    body: Callable[[], Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    try:
        rt = Runtime.for_header(header, task._get_app())
    except SagaError as exc:
        # This process does not know the saga: run the step and let the reply
        # errback / success signal carry the outcome to a worker that does.
        log(logging.WARNING, header.saga_id, header.index, "%s; reporting by reply message", exc)
        hooks = tracing.hooks
        if hooks is None:
            return body()
        return _run_traced_elsewhere(hooks, tracing.attempt_of(request, header, task.name), body)
    except Exception as exc:
        # The store could not be opened: a process opens it on its first saga message,
        # and one that is unreachable right now (a Redis Cluster client asks a node for
        # the slot map as it is made) raises here, before anything ran. That is not the
        # step's failure: mark the request handled, so `task_failure` receivers do not
        # record it as one, and try again later, as the gate does.
        setattr(request, HANDLED, True)
        log(
            logging.WARNING,
            header.saga_id,
            header.index,
            "store not reachable (%r); attempt %s put off",
            exc,
            header.attempt,
        )
        raise _put_off(task, exc) from exc
    setattr(request, HANDLED, True)
    if header.compensation:
        return _run_compensation(task, rt, request, header, body, args, kwargs)
    started_at: float | None = None
    redelivered = bool((getattr(request, "delivery_info", None) or {}).get("redelivered"))
    if header.started and not request.retries and not redelivered:
        started_at = time.time()  # marked started with its stage: no gate of its own
    else:
        # A redelivered copy of a message its stage marked started may meet the first
        # copy still running, not yet claimed by its heartbeat: the gate checks for that.
        copy = header.started and redelivered and not request.retries
        _gate(task, rt, header, forward.step_started, header.task_id, request.retries or 0, copy)
    # Held while the body and its bookkeeping run; a step marked started with its
    # stage is claimed by the first beat (a short step costs no lease write at all).
    lease = Lease(header.saga_id, header.index, leases.owner_of(header.task_id), header.attempt)
    with leases.holding(rt.backend, lease, leases.lease_seconds(rt.app)):
        hooks = tracing.hooks
        if hooks is None:
            return _run_step(rt, header, body, kwargs, started_at)
        with hooks.attempt(_attempt(task, rt, request, header)) as scope:
            return _run_step(rt, header, body, kwargs, started_at, scope)


def _attempt(task: Task, rt: Runtime, request: Any, header: SagaHeader) -> tracing.Attempt:
    """What the trace hooks are told about the attempt `request` runs."""
    try:
        stage: int | None = rt.definition.step(header.index).stage
    except Exception:  # a header naming a step this definition lacks: refused further on
        stage = None
    return tracing.attempt_of(request, header, task.name, stage)


def _run_traced_elsewhere(
    hooks: tracing.TraceHooks, attempt: tracing.Attempt, body: Callable[[], Any]
) -> Any:
    """The body of an attempt whose outcome another process records, traced."""
    with hooks.attempt(attempt) as scope:
        try:
            return body()
        except Retry:
            raise
        except _PermanentShield as shield:
            scope.failed(shield.failure)
            raise
        except Exception as exc:
            scope.failed(exc)
            raise


def _run_step(
    rt: Runtime,
    header: SagaHeader,
    body: Callable[[], Any],
    kwargs: dict[str, Any],
    started_at: float | None,
    scope: tracing.AttemptScope | None = None,
) -> Any:
    try:
        value = body()
    except Retry:
        raise
    except _PermanentShield as shield:
        failure = shield.failure
        if scope is not None:
            scope.failed(failure)
        done = bookkeep(
            rt,
            header,
            forward.step_failed,
            describe_error(failure),
            failure.compensation_data,
            error_types(failure),
            started_at,
        )
        raise recorded(failure, done) from None
    except Exception as exc:
        if scope is not None:
            scope.failed(exc)
        data = exc.compensation_data if isinstance(exc, PermanentFailure) else None
        # An exception the step did not raise on purpose keeps its traceback in the log.
        deliberate = isinstance(exc, PermanentFailure | StepOutputError)
        done = bookkeep(
            rt,
            header,
            forward.step_failed,
            describe_error(exc),
            data,
            error_types(exc),
            started_at,
            None if deliberate else exc,
        )
        recorded(exc, done)
        raise
    try:
        output, compensation_data = outcome_of(rt, header, value)
    except StepOutputError as exc:
        if scope is not None:
            scope.failed(exc)
        done = bookkeep(
            rt, header, forward.step_failed, str(exc), None, error_types(exc), started_at
        )
        recorded(exc, done)
        raise
    bookkeep(rt, header, forward.step_succeeded, output, compensation_data, started_at, kwargs)
    return output


def _run_compensation(
    task: Task,
    rt: Runtime,
    request: Any,
    header: SagaHeader,
    body: Callable[[], Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    _gate(task, rt, header, compensation.compensation_started, header.task_id)
    model = _compensation_model(task)
    if model is not None and args and isinstance(args[0], dict):
        body = functools.partial(task.run, model.model_validate(args[0]), *args[1:], **kwargs)
    if header.late is not None:  # undoing a superseded attempt's effect: no lease of its own
        return _traced_compensate(task, rt, request, header, body)
    owner = leases.owner_of(header.task_id)
    lease = Lease(header.saga_id, header.index, owner, header.attempt, compensation=True)
    with leases.holding(rt.backend, lease, leases.lease_seconds(rt.app)):
        return _traced_compensate(task, rt, request, header, body)


def _traced_compensate(
    task: Task, rt: Runtime, request: Any, header: SagaHeader, body: Callable[[], Any]
) -> Any:
    """`_compensate`, inside the trace hooks' attempt when tracing is on."""
    hooks = tracing.hooks
    if hooks is None:
        return _compensate(rt, header, body)
    with hooks.attempt(_attempt(task, rt, request, header)) as scope:
        return _compensate(rt, header, body, scope)


def _compensate(
    rt: Runtime,
    header: SagaHeader,
    body: Callable[[], Any],
    scope: tracing.AttemptScope | None = None,
) -> Any:
    try:
        value = body()
    except Retry:
        raise
    except Exception as exc:
        if scope is not None:
            scope.failed(exc)
        bookkeep(rt, header, compensation.compensation_failed, describe_error(exc))
        raise
    bookkeep(rt, header, compensation.compensation_succeeded)
    return value


def _put_off(task: Task, exc: Exception) -> Retry:
    """The retry that puts an attempt off while the store cannot be reached. Past the
    task's own ``max_retries`` Celery raises `exc`, and the attempt is left to recovery."""
    return task.retry(exc=exc, countdown=2, max_retries=None)


def _gate(
    task: Task, rt: Runtime, header: SagaHeader, fn: Callable[..., Admission], *args: Any
) -> None:
    """Record that an attempt starts, or refuse it (Ignore) or put it off (retry)."""
    try:
        admission: Admission = bookkeep(rt, header, fn, *args, gate=True)
    except SagaError:
        raise
    except Exception as exc:  # the store is unreachable: run nothing, try again later
        raise _put_off(task, exc) from exc
    if admission.wait is not None:  # another process runs this attempt: try after its lease
        raise task.retry(countdown=admission.wait, max_retries=None)
    if not admission.run:
        raise Ignore()


def _compensation_model(task: Task) -> Any:
    """The Pydantic model a compensation's first parameter is annotated with, if any."""
    try:
        hints = typing.get_type_hints(task.run)
    except Exception:
        return None
    hints.pop("return", None)
    hint = hints.get("compensation_data") or next(iter(hints.values()), None)
    return hint if hasattr(hint, "model_validate") else None


registry.on_task(instrument)  # every task that becomes a step or compensation
