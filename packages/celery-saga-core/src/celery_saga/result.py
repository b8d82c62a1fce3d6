"""`SagaResult`: a handle to one execution, readable from any process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from celery_saga.graphs import execution_graph, to_dot, to_mermaid, to_svg
from celery_saga.ids import validate_saga_id
from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus, StepStatus
from celery_saga.outcomes import (
    SagaCancelled,
    SagaCompensated,
    SagaFailed,
    SagaReverted,
    SagaTimeoutError,
)
from celery_saga.views import step_view

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from celery_saga.aio import SagaUpdate
    from celery_saga.backends.base import SagaBackend
    from celery_saga.registry import Saga

# Re-exported here because celery-saga 0.1 defined them in this module.
__all__ = [
    "SagaCancelled",
    "SagaCompensated",
    "SagaFailed",
    "SagaResult",
    "SagaReverted",
    "SagaTimeoutError",
]


class SagaResult:
    """The state of one saga execution, read from the state store on each access.

    The saga id is validated when the handle is made (InvalidSagaId, a ValueError,
    says what a saga id looks like), so no malformed id ever reaches the store.
    """

    def __init__(
        self, saga_id: str, backend: SagaBackend | str, *, saga: Saga | None = None
    ) -> None:
        self.saga_id = validate_saga_id(saga_id)
        if isinstance(backend, str):  # a store URL, as in `saga_backend`
            from celery_saga.config import backend_for

            backend = backend_for(None, backend)
        self._backend = backend
        self._saga = saga

    @property
    def backend(self) -> SagaBackend:
        """The state store this execution lives in."""
        return self._backend

    @property
    def execution(self) -> SagaExecution | None:
        """The stored execution with all its steps (None if it does not exist)."""
        return self._backend.get(self.saga_id)

    @property
    def status(self) -> SagaStatus | None:
        """The execution's status, or None if it does not exist (one field is read)."""
        return self._backend.get_status(self.saga_id)

    @property
    def steps(self) -> list[dict[str, Any]] | None:
        """One dict per step (`celery_saga.views.step_view`): index, task, status, error,
        output, attempts, timings (epoch seconds), compensation, workers, attempt history."""
        execution = self.execution
        if execution is None:
            return None
        return [step_view(s) for s in execution.steps]

    def _stored(self) -> SagaExecution:
        execution = self.execution
        if execution is None:
            raise LookupError(f"saga {self.saga_id} does not exist in {self._backend!r}")
        return execution

    def to_mermaid(self) -> str:
        """This execution as a Mermaid flowchart, each step coloured by its status."""
        return to_mermaid(execution_graph(self._stored()))

    def to_dot(self) -> str:
        """This execution as Graphviz DOT, coloured by status, details in tooltips."""
        return to_dot(execution_graph(self._stored()))

    def to_svg(self) -> str:
        """This execution's graph as SVG (one row per stage), coloured by status."""
        return to_svg(execution_graph(self._stored()))

    @property
    def context(self) -> dict[str, Any] | None:
        """The saga context so far (input plus step outputs, with transforms applied).

        Transforms are applied when the saga's definition is registered in this
        process; otherwise outputs are merged without them.
        """
        execution = self.execution
        if execution is None:
            return None
        if execution.status is SagaStatus.COMPLETED and self._saga is None:
            return execution.context
        definition = self._definition(execution)
        if definition is None:
            return execution.context
        from celery_saga.context import InputResolutionError, final_context

        try:
            return final_context(definition, execution)
        except InputResolutionError:
            return execution.context

    def _definition(self, execution: SagaExecution) -> Any:
        from celery_saga import registry
        from celery_saga.errors import SagaError

        saga = self._saga
        if saga is None:
            try:
                saga = registry.lookup(execution.saga_name)  # any app: read-only use
            except SagaError:
                return None
        definition = saga.definition
        return definition if definition.hash == execution.definition_hash else None

    @property
    def is_complete(self) -> bool:
        """True once the execution is COMPLETED, COMPENSATED or FAILED."""
        return self.status in TERMINAL_STATUSES

    def ready(self) -> bool:
        """Celery-style alias of `is_complete`."""
        return self.is_complete

    def get(self, timeout: float | None = None, interval: float = 0.5) -> Any:
        """Wait for the end and return the output; raise if the saga did not complete.

        The output is the final context, or what a functional saga returned.
        Raises `SagaCompensated` (rolled back), `SagaFailed` (a compensation could
        not be done) or `SagaTimeoutError` (a `TimeoutError` carrying the status, the
        note stored on the execution and what to check). `interval` is kept for
        compatibility: the store notifies or polls on its own schedule.
        """
        outcome = self._backend.wait_outcome(self.saga_id, timeout)
        if outcome is not None and outcome.status is SagaStatus.COMPLETED:
            return outcome.output
        execution = None if outcome is None else outcome.execution
        if outcome is not None and execution is None:  # announced, not read: read it now
            execution = self._backend.get(self.saga_id)
            if execution is None or execution.status not in TERMINAL_STATUSES:
                execution = self._backend.wait(self.saga_id, timeout)  # reopened meanwhile
        return self._settle(execution, timeout)

    async def aget(self, timeout: float | None = None) -> Any:
        """`get` for asyncio: the same output and exceptions, without blocking the loop.

        The store's `async_wait` waits (by notification on Redis and PostgreSQL, by
        polling in a thread elsewhere); the outcome is then built in a thread, since
        a timed-out wait reads the execution once more. See `celery_saga.aio`.
        """
        from celery_saga.offload import run_blocking

        execution = await self._backend.async_wait(self.saga_id, timeout)
        return await run_blocking(self._settle, execution, timeout)

    def watch(self, *, interval: float = 0.25) -> AsyncIterator[SagaUpdate]:
        """Step-by-step progress for asyncio: ``async for update in result.watch()``.

        Yields a `celery_saga.aio.SagaUpdate` for each change of a step's status (or
        attempt) and of the saga's status, in the order they happened, and ends after
        the update of a terminal status. See `celery_saga.aio.watch`.
        """
        from celery_saga.aio import watch

        return watch(self, interval=interval)

    def _settle(self, execution: SagaExecution | None, timeout: float | None) -> Any:
        """What `get` returns or raises once the wait is over (None: it timed out)."""
        if execution is None:
            current = self._backend.get(self.saga_id)
            if current is None:
                raise LookupError(f"saga {self.saga_id} does not exist in {self._backend!r}")
            if current.status not in TERMINAL_STATUSES:
                raise SagaTimeoutError(self._timeout_message(current, timeout), current, timeout)
            execution = current  # it finished just as the wait gave up
        if execution.status is SagaStatus.COMPLETED:
            return execution.output
        failures = "; ".join(
            f"step {s.index} {s.task_name}: {s.error}"
            for s in execution.steps
            if s.error and s.status is not StepStatus.SKIPPED
        )
        if execution.status is SagaStatus.REVERTED:
            raise SagaReverted(
                f"saga {execution.saga_name} ({execution.saga_id}) completed and was then "
                f"reverted ({execution.revert_reason}); every step it had done was compensated",
                execution=execution,
            )
        if execution.status is SagaStatus.CANCELLED:
            raise SagaCancelled(
                f"saga {execution.saga_name} ({execution.saga_id}) was {execution.error}; "
                "every step it had done was compensated",
                execution=execution,
            )
        if execution.status is SagaStatus.COMPENSATED:
            raise SagaCompensated(
                f"saga {execution.saga_name} ({execution.saga_id}) was compensated. "
                f"Failures: {failures or execution.error}",
                execution=execution,
            )
        comp_failures = "; ".join(
            f"step {s.index} {s.compensation_task_name}: {s.comp_error}"
            for s in execution.steps
            if s.status is StepStatus.COMPENSATION_FAILED
        )
        raise SagaFailed(
            f"saga {execution.saga_name} ({execution.saga_id}) failed and could not be fully "
            f"compensated. Failures: {failures or execution.error}. "
            f"Compensations that failed: {comp_failures or 'none recorded'}",
            execution=execution,
        )

    def _timeout_message(self, execution: SagaExecution, timeout: float | None) -> str:
        """Why `get(timeout)` gave up: the status, what it waits for, the note, what to check."""
        return timeout_message(execution, timeout, self._backend, self._definition(execution))

    def cancel(self, reason: str | None = None) -> bool:
        """Cancel the saga: no new step starts, running steps finish, done ones are undone.

        Returns True if this call cancelled it, False if it had already finished or
        was already compensating. The final status is CANCELLED (FAILED if a
        compensation cannot be done). Needs the saga's definition in this process.
        """
        from celery_saga import registry

        execution = self.execution
        if execution is None:
            raise LookupError(f"saga {self.saga_id} does not exist in {self._backend!r}")
        saga = self._saga or registry.lookup(execution.saga_name)
        return bool(registry.launcher().cancel(saga, self.saga_id, reason))

    def _launch_saga(self) -> tuple[Any, Any]:
        """The launcher and this execution's saga (looked up by name if not given)."""
        from celery_saga import registry

        saga = self._saga
        if saga is None:
            execution = self.execution
            if execution is None:
                raise LookupError(f"saga {self.saga_id} does not exist in {self._backend!r}")
            saga = registry.lookup(execution.saga_name)
        return registry.launcher(), saga

    def complete_step(self, step: str, output: dict[str, Any] | None = None) -> Any:
        """Complete the external step `step` with `output` (merged into the context).

        Returns a `StepCompletion`: true when applied; false, with its ``reason``, when
        refused (already completed or failed, not reached yet, or the saga is
        compensating or finished). Never applied twice. Needs the saga's definition
        in this process (import the module that defines it).
        """
        launcher, saga = self._launch_saga()
        return launcher.settle(saga, self.saga_id, step, output, None)

    def fail_step(self, step: str, error: str = "failed from outside") -> Any:
        """Fail the external step `step` with `error`: the saga compensates.

        Returns a `StepCompletion`, as `complete_step` does.
        """
        launcher, saga = self._launch_saga()
        return launcher.settle(saga, self.saga_id, step, None, str(error))

    def revert(self, reason: str | None = None) -> None:
        """Revert a COMPLETED saga: compensate every compensable step in reverse order.

        The saga ends REVERTED (`get()` then raises `SagaReverted`), or FAILED if a
        compensation cannot be done. Anything but a COMPLETED saga is refused with a
        `SagaError` that gives its status.
        """
        launcher, saga = self._launch_saga()
        launcher.revert(saga, self.saga_id, reason)

    def __repr__(self) -> str:
        return f"<SagaResult saga_id={self.saga_id} status={self.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SagaResult) and other.saga_id == self.saga_id

    def __hash__(self) -> int:
        return hash(self.saga_id)


def timeout_message(
    execution: SagaExecution, timeout: float | None, backend: SagaBackend, definition: Any
) -> str:
    """The message of `SagaTimeoutError`: where the saga stands and what to check.

    `definition` (the saga's, when this process has it) names the queue a waiting
    step was sent to. A saga with a note (a worker recorded a problem) points at the
    note; one that simply shows no progress lists the usual causes, a worker on
    another store first, since that worker can write nothing here.
    """
    status = execution.status
    head = (
        f"saga {execution.saga_name} ({execution.saga_id}) did not finish within {timeout}s: "
        f"it is {status.value.upper()}"
    )
    waiting = [s for s in execution.steps if s.status in (StepStatus.RUNNING, StepStatus.PENDING)]
    waiting = [s for s in waiting if s.attempt > 0] or waiting[:1]
    if status is SagaStatus.RUNNING and waiting:
        steps = "; ".join(_waiting_for(execution, s, definition) for s in waiting)
        head += f", waiting for {steps}"
    note = f". Note on the execution: {execution.error}" if execution.error else ""
    show = f"`celery saga show {execution.saga_id}`"
    if status is SagaStatus.PENDING:
        advice = (
            "Its first stage was never sent (the broker was unreachable when run() was "
            "called): call run() again with the same idempotency_key, or let the recovery "
            "pass (`celery saga recover`) send it."
        )
    elif status is SagaStatus.COMPENSATING:
        advice = f"It is undoing its steps; wait longer (get() again), or follow it with {show}."
    elif execution.error:
        advice = f"Do what the note says, then call get() again; {show} shows every step."
    else:
        advice = (
            f"If it makes no progress: is a worker running that consumes that queue and "
            f"imports the module defining saga {execution.saga_name!r}? Do the producer and "
            f"the workers use the same `saga_backend`? This process reads {backend!r}; a "
            "worker on another store (another URL, database or ?prefix=) finds no record "
            f"and logs `no record of saga {execution.saga_id}`. Otherwise wait longer "
            f"(get() again), or look with {show}."
        )
    return f"{head}{note}. {advice}"


def _waiting_for(execution: SagaExecution, step: Any, definition: Any) -> str:
    """One waiting step: its task, for how long, who holds it, and its queue if known."""
    since = step.started_at or step.sent_at
    age = "" if since is None else f" for {max(0.0, time.time() - since):.0f}s"
    holder = f"held by {step.lease_owner}" if step.lease_owner else "no worker has claimed it"
    queue = ""
    if definition is not None and step.kind == "task" and step.attempt > 0:
        try:
            from celery_saga.compiler import queue_of

            queue = f", queue {queue_of(definition, execution, step.index)!r}"
        except Exception:  # a router that fails here must not hide the timeout
            queue = ""
    if step.attempt == 0:
        return f"step {step.index} ({step.task_name}) to be sent"
    if step.kind == "external":
        return (
            f"external step {step.index} ({step.task_name}){age}: complete it with "
            "complete_step() / fail_step() or `celery saga complete` / `fail`"
        )
    if step.kind == "saga":
        return f"child saga step {step.index} ({step.task_name}, execution {step.child_id}){age}"
    return (
        f"step {step.index} ({step.task_name}) {step.status.value}{age}, attempt "
        f"{step.attempt}, {holder}{queue}"
    )
