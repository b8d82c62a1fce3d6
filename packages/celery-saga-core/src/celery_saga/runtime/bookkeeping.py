"""Bookkeeping calls from a step's worker: retried while the store is briefly away, and
the marks that tell Celery's receivers and logs what the runtime already recorded.

A write to a saga the store has no record of is not retried: `no_record` says which
store the worker uses, since neither a retry nor the recovery pass can help there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery_saga.errors import SagaError, SagaRecordNotFound
from celery_saga.headers import SagaHeader
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.log import log

#: Set on a Celery request whose outcome the runtime records (receivers leave it alone).
HANDLED = "celery_saga_handled"
#: Set on an exception the runtime recorded and logged (see `HandledFailure`).
_HANDLED_FAILURE = "_celery_saga_handled_failure"
#: What `bookkeep` returns when an outcome could not be recorded even after retries.
UNRECORDED = object()


class _HandledMeta(type):
    """Makes ``isinstance(exc, HandledFailure)`` true for exceptions marked as handled."""

    def __instancecheck__(cls, instance: Any) -> bool:
        return getattr(instance, _HANDLED_FAILURE, False) is True


class HandledFailure(Exception, metaclass=_HandledMeta):
    """Stands in a step task's ``throws`` for the failures the saga already logged.

    Celery's tracer logs an exception that is an instance of one of ``Task.throws``
    as expected: at INFO, without a traceback. Nothing is ever raised as this class;
    an exception matches it when the runtime marked it (`handled`) after recording
    the step's failure and logging it at WARNING with the saga id. Unmarked
    exceptions, and every call outside a saga, are logged by Celery as before.
    """


def handled(exc: BaseException) -> BaseException:
    """Mark `exc` as recorded and logged by the saga runtime (see `HandledFailure`)."""
    try:
        setattr(exc, _HANDLED_FAILURE, True)
    except Exception:  # an exception type that takes no attributes: Celery logs it as before
        pass
    return exc


def recorded(exc: BaseException, done: Any) -> BaseException:
    """Mark `exc` handled when its bookkeeping `done` (not `UNRECORDED`) recorded it."""
    return exc if done is UNRECORDED else handled(exc)


def no_record(rt: Runtime, header: SagaHeader, *, ran: bool) -> SagaRecordNotFound:
    """The error (logged once, at ERROR) for a message whose saga this store has no record of.

    A write to a saga that does not exist raises KeyError in every store; after one
    read confirms there is no record, it is this: the worker and the process that
    started the saga use different stores. `ran` says whether the step's body ran.
    """
    try:
        name = rt.definition.step(header.index).task_name
    except Exception:
        name = "?"
    part = "Compensation of step" if header.compensation else "Step"
    done = (
        f"{part} {header.index} ({name}) ran, but its outcome could not be recorded"
        if ran
        else f"{part} {header.index} ({name}) was not run"
    )
    error = SagaRecordNotFound(
        f"no record of saga {header.saga_name!r} {header.saga_id} in this worker's store "
        f"{rt.backend!r}: the process that started it stored it elsewhere. The producer and "
        "every worker must share one store: give them the same `saga_backend` (the same "
        f"URL, database and ?prefix=), or the same `backend=` on the saga. {done}; this "
        "message is dropped, not retried: neither a retry nor the recovery pass can find a "
        "record that is not in this store."
    )
    log(logging.ERROR, header.saga_id, header.index, "%s", error)
    handled(error)
    return error


def check_record(rt: Runtime, header: SagaHeader, *, ran: bool) -> None:
    """After a KeyError from a write: raise `no_record` if the store has no record of the saga.

    Returns when the record exists (the KeyError means something else) or the store
    cannot be read (the caller's usual retries apply).
    """
    try:
        missing = rt.backend.get(header.saga_id) is None
    except Exception:
        return
    if missing:
        raise no_record(rt, header, ran=ran) from None


RETRY_DELAYS = (0.05, 0.25, 1.0, 2.0)


def bookkeep(
    rt: Runtime, header: SagaHeader, fn: Callable[..., Any], *args: Any, gate: bool = False
) -> Any:
    """Run a bookkeeping call, retrying transient store or broker errors.

    A gate that still fails raises (the step must not run unrecorded). An outcome
    that still fails is logged and never fails the user's step: the recovery pass
    finds the saga without progress; `UNRECORDED` is returned. A saga the store
    has no record of raises `SagaRecordNotFound` at once (see `no_record`): no retry
    and no recovery pass can help there.
    """
    for delay in (*RETRY_DELAYS, None):
        try:
            return fn(rt, header, *args)
        except SagaError:
            raise
        except Exception as exc:
            if isinstance(exc, KeyError):
                check_record(rt, header, ran=not gate)
            if delay is None:
                if gate:
                    raise
                log(
                    logging.ERROR,
                    header.saga_id,
                    header.index,
                    "bookkeeping %s failed for good: %r; the recovery pass will resume this saga",
                    fn.__name__,
                    exc,
                    exc_info=True,
                )
                return UNRECORDED
            log(
                logging.WARNING,
                header.saga_id,
                header.index,
                "bookkeeping %s failed (%r); retrying in %ss",
                fn.__name__,
                exc,
                delay,
            )
            time.sleep(delay)
    return None
