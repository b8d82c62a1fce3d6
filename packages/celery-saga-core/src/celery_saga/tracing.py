"""Where a tracing package plugs into the runtime (celery-saga-opentelemetry does).

Core has no tracing dependency. It calls the hooks given to `set_trace_hooks` at three
places: when `run()` creates an execution (`TraceHooks.saga_created`, whose carrier is
kept on the record as `SagaExecution.trace_context`), when a step or compensation
message is built (`TraceHooks.inject`, so the current context travels in its headers),
and around each attempt's body in the worker (`TraceHooks.attempt`). With no hooks set,
the default, each place costs one attribute check.

A traced saga's messages also carry its original trace context in the saga header
(`SagaHeader.trace`), so a worker can link an attempt that was sent again (a retry, a
recovery, a revert) back to the trace the saga was started in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from celery_saga.headers import SagaHeader

#: `Attempt.part` of a step's own attempt.
STEP = "step"
#: `Attempt.part` of a compensation's attempt.
COMPENSATION = "compensation"


@dataclass
class SagaRun:
    """One `run()` (or a child saga's start) as the hooks see it, around `saga_created`."""

    saga_name: str
    #: The id the new execution gets.
    saga_id: str
    #: The parent execution, for a child saga.
    parent_id: str | None = None
    #: Set by core when an idempotency key found an execution stored earlier (nothing new
    #: was created): that execution's id.
    existing_id: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One attempt of a step or a compensation, as the worker about to run it sees it."""

    saga_id: str
    saga_name: str
    #: The step's index in the definition.
    index: int
    #: Its stage (a parallel group's members share one); None where the worker does not
    #: know the saga's definition.
    stage: int | None
    #: The attempt number (of the step, or of its compensation).
    attempt: int
    #: `STEP` or `COMPENSATION`.
    part: str
    #: The Celery task that runs it.
    task_name: str
    #: The Celery task id of this delivery.
    task_id: str | None
    #: The Celery request: the message's headers are its attributes (``request.headers``
    #: in eager mode), where a propagator finds the context the sender injected.
    request: Any
    #: The saga's original trace context (W3C carrier), from the saga header.
    trace_context: dict[str, str] | None
    #: Sent again: a retry (the step's retry policy, a compensation tried again, a Celery
    #: retry of the same attempt), a recovery's re-send, a redelivery, or a compensation
    #: of a saga being reverted. Such an attempt links back to `trace_context`.
    resent: bool


class AttemptScope(Protocol):
    """What the runtime tells the hooks while an attempt runs."""

    def failed(self, exc: BaseException) -> None:
        """The attempt failed with `exc` (the runtime recorded the failure)."""


class TraceHooks(Protocol):
    """What a tracing package implements; see the module's docstring for when each runs."""

    def saga_created(self, run: SagaRun) -> AbstractContextManager[dict[str, str] | None]:
        """Around the creation of an execution and the send of its first stage.

        Yields the carrier to keep as the execution's `trace_context` (None: nothing).
        """

    def inject(self, headers: dict[str, Any]) -> None:
        """Put the current context into a step or compensation message's headers."""

    def attempt(self, attempt: Attempt) -> AbstractContextManager[AttemptScope]:
        """Around the body of an attempt, and the bookkeeping of its outcome."""


#: The hooks in force; None (the default) when nothing traces.
hooks: TraceHooks | None = None


def set_trace_hooks(new: TraceHooks | None) -> None:
    """Install `new` as the trace hooks of this process (None: stop tracing)."""
    global hooks
    hooks = new


def attempt_of(
    request: Any, header: SagaHeader, task_name: str, stage: int | None = None
) -> Attempt:
    """The `Attempt` a Celery request runs, from its saga header."""
    delivery = getattr(request, "delivery_info", None) or {}
    resent = (
        header.attempt > 1
        or header.late is not None
        or header.revert
        or bool(getattr(request, "retries", 0))
        or bool(delivery.get("redelivered"))
    )
    return Attempt(
        saga_id=header.saga_id,
        saga_name=header.saga_name,
        index=header.index,
        stage=stage,
        attempt=header.attempt,
        part=COMPENSATION if header.compensation else STEP,
        task_name=task_name,
        task_id=getattr(request, "id", None),
        request=request,
        trace_context=header.trace,
        resent=resent,
    )
