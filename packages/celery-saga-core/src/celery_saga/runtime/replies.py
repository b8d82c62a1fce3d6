"""Reply tasks: bookkeeping on the saga's queue for outcomes reported by message.

Steps named by task name run on workers that may not know the saga (or even
celery-saga): their `link` and `link_error` send the outcome here. The errback
also catches what a step's own worker cannot report from inside the task (a hard
time limit kills the process). Celery sends an errback it cannot call inline as
a message whose only argument is the task id, so `reply_failure` takes both forms.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Signature, current_task, shared_task
from celery.signals import task_failure, task_success

from celery_saga.compiler import REPLY_FAILURE, REPLY_SUCCESS, SERIALIZER
from celery_saga.errors import PermanentFailure, SagaError, SagaNotRegistered, StepOutputError
from celery_saga.headers import SagaHeader, header_of
from celery_saga.ids import parse_task_id
from celery_saga.plain import to_plain
from celery_saga.response import StepResponse, ensure_json, normalize_result
from celery_saga.retry import error_types
from celery_saga.runtime import compensation, forward, orphans
from celery_saga.runtime.binding import Runtime, describe_error, outcome_of
from celery_saga.runtime.bookkeeping import HANDLED, HandledFailure, check_record
from celery_saga.runtime.log import log, logger

_RETRY = {
    "serializer": SERIALIZER,  # their own retries stay JSON on an app that pickles
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "autoretry_for": (Exception,),
    "dont_autoretry_for": (SagaError,),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "max_retries": 20,
    "throws": (HandledFailure,),  # a failure logged here is not logged again by Celery
}


@contextmanager
def _recording(rt: Runtime, header: SagaHeader) -> Iterator[None]:
    """Turn a write to a saga this store has no record of into `SagaRecordNotFound`.

    That is a SagaError, which the reply task does not retry: the message is dropped
    with one error saying that the producer and this worker use different stores.
    """
    try:
        yield
    except KeyError:
        check_record(rt, header, ran=True)
        raise


def _header(saga: Any) -> SagaHeader | None:
    header = SagaHeader.from_dict(saga)
    if header is None:
        logger.error("saga reply without a valid saga header (%r): ignored", saga)
    return header


@shared_task(name=REPLY_SUCCESS, **_RETRY)  # type: ignore[untyped-decorator]
def reply_success(retval: Any = None, saga: Any = None) -> None:
    """A step or compensation named by task name succeeded: record it, move on."""
    header = _header(saga)
    if header is None:
        return
    try:
        rt = Runtime.for_header(header, current_task.app)
    except SagaNotRegistered:
        what = f"the return value of step {header.index} of saga {header.saga_name!r}"
        try:
            output, data = normalize_result(retval, what)
            ensure_json(output, what, "step output")
            ensure_json(data, what, "compensation data")
        except StepOutputError as exc:
            orphans.record_unregistered(current_task.app, header, succeeded=False, error=str(exc))
            return
        orphans.record_unregistered(
            current_task.app, header, succeeded=True, output=output, compensation_data=data
        )
        return
    with _recording(rt, header):
        if header.compensation:
            compensation.compensation_succeeded(rt, header)
            return
        try:
            output, compensation_data = outcome_of(rt, header, retval)
        except StepOutputError as exc:
            forward.step_failed(rt, header, str(exc), None, error_types(exc))
            return
        forward.step_succeeded(rt, header, output, compensation_data)


@shared_task(name=REPLY_FAILURE, **_RETRY)  # type: ignore[untyped-decorator]
def reply_failure(
    request: Any = None,
    exc: Any = None,
    traceback: Any = None,
    saga: Any = None,
    error: str | None = None,
    compensation_data: Any = None,
    error_names: list[str] | None = None,
) -> None:
    """A step or compensation failed for good: record it (forwarding it first if inline).

    Called inline as ``(request, exc, traceback)`` in the worker where the task
    failed, it only forwards the details to the saga's queue; called by message as
    ``(task_id)``, it records the failure.
    """
    header = _header(saga)
    if header is None:
        return
    if not isinstance(request, str):
        if request is not None and getattr(request, HANDLED, False):
            return  # the step's own worker already recorded it
        details: dict[str, Any] = {
            "saga": saga,
            "error": describe_error(exc) if exc is not None else None,
            "error_names": error_types(exc) if isinstance(exc, BaseException) else [],
        }
        if isinstance(exc, PermanentFailure):
            details["compensation_data"] = exc.compensation_data
        task_id = getattr(request, "id", None) or header.task_id
        app = current_task.app
        options = {"queue": header.queue, "serializer": SERIALIZER}
        Signature(REPLY_FAILURE, (task_id,), details, options, app=app).apply_async()
        return
    rt = Runtime.for_header(header, current_task.app)
    message = (
        error
        or _peek_error(rt, request)
        or (
            f"task {request} failed on a worker that reported no details "
            "(configure a result backend, or install celery-saga there, to see the exception)"
        )
    )
    with _recording(rt, header):
        if header.compensation:
            compensation.compensation_failed(rt, header, message)
        else:
            forward.step_failed(rt, header, message, compensation_data, error_names or ())


def _peek_error(rt: Runtime, task_id: str) -> str | None:
    """Read a failed task's exception from the result backend, without waiting."""
    try:
        from celery.backends.base import DisabledBackend

        backend = rt.app.backend
        if isinstance(backend, DisabledBackend):
            return None
        meta = backend.get_task_meta(task_id)
        result = meta.get("result")
        if meta.get("status") == "FAILURE" and isinstance(result, BaseException):
            return describe_error(result)
    except Exception:  # the result backend is optional; its errors are not ours
        return None
    return None


def _callback_names(callbacks: Any) -> set[str]:
    names = set()
    for cb in callbacks or ():
        name = cb.get("task") if isinstance(cb, dict) else getattr(cb, "task", None)
        if name:
            names.add(str(name))
    return names


@task_success.connect(weak=False)  # type: ignore[untyped-decorator]
def forward_unrecorded_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    """A saga step succeeded in a process whose wrapper did not record it: reply by message."""
    request = getattr(sender, "request", None)
    if request is None or getattr(request, HANDLED, False):
        return
    header = header_of(request)
    if header is None or REPLY_SUCCESS in _callback_names(request.callbacks):
        return  # not a saga step, or a step whose reply callback reports it
    payload = result.__json__() if isinstance(result, StepResponse) else to_plain(result)
    log(logging.INFO, header.saga_id, header.index, "forwarding the outcome to the saga queue")
    Signature(
        REPLY_SUCCESS,
        (payload,),
        {"saga": header.to_dict()},
        {"queue": header.queue, "serializer": SERIALIZER},
        app=sender._get_app(),
    ).apply_async()


@task_failure.connect(weak=False)  # type: ignore[untyped-decorator]
def record_unreported_failure(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
) -> None:
    """A saga step failed where its wrapper could not record it: record it from here.

    This is the worker's main process reporting a hard time limit or a lost child,
    or a worker that does not know the saga. The task id names the saga, the step
    and the attempt; recording is a compare-and-set, so a second report (Celery
    5.7.0 sends two for a hard time limit) changes nothing.
    """
    request = getattr(sender, "request", None)
    if request is not None and getattr(request, HANDLED, False):
        return
    header = header_of(request) if request is not None else None
    if header is None:
        ref = parse_task_id(task_id or "")
        if ref is None:
            return
        execution = _find_execution(sender._get_app() if sender is not None else None, ref.saga_id)
        if execution is None:
            return
        header = SagaHeader(
            ref.saga_id,
            execution.saga_name,
            ref.index,
            ref.attempt,
            ref.compensation,
            execution.definition_hash,
        )
    if REPLY_FAILURE in _callback_names(getattr(request, "errbacks", None)):
        return  # a step named by task name: its reply errback reports it
    error = (
        describe_error(exception)
        if isinstance(exception, BaseException)
        else (f"task {task_id} failed")
    )
    try:
        rt = Runtime.for_header(header, sender._get_app() if sender else None)
    except SagaNotRegistered:
        orphans.record_unregistered(sender._get_app(), header, succeeded=False, error=error)
        return
    if header.compensation:
        compensation.compensation_failed(rt, header, error)
    else:
        data = exception.compensation_data if isinstance(exception, PermanentFailure) else None
        names = error_types(exception) if isinstance(exception, BaseException) else []
        forward.step_failed(rt, header, error, data, names)


def _find_execution(app: Any, saga_id: str) -> Any:
    """Look for an execution in the app's store, then in the stores of its sagas."""
    from celery_saga import registry
    from celery_saga.config import backend_for

    stores = [backend_for(app)]
    for saga in registry.registered().values():
        if saga.app is app and saga.backend is not None:
            stores.append(backend_for(app, saga.backend))
    for store in dict.fromkeys(stores):
        execution = store.get(saga_id)
        if execution is not None:
            return execution
    return None
