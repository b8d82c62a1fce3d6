"""What `Saga.run()` and `Saga.result()` call: start through the runtime, hand back a `SagaResult`.

Installed into the registry when `celery_saga` is imported, so the definition layer
reaches the runtime without importing it, and the runtime never builds the client's
objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery_saga import registry
from celery_saga.config import backend_for
from celery_saga.ids import validate_saga_id
from celery_saga.result import SagaResult
from celery_saga.runtime import external, operator
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.compensation import cancel
from celery_saga.runtime.start import start

if TYPE_CHECKING:
    from celery_saga.registry import Saga


class Client:
    """Starts executions of a saga and makes handles to them."""

    def run(
        self, saga: Saga, input: dict[str, Any], idempotency_key: str | None, queue: str | None
    ) -> SagaResult:
        """Start an execution (see `Saga.run`) and return its handle."""
        saga_id = start(saga, input, idempotency_key=idempotency_key, queue=queue)
        return SagaResult(saga_id, Runtime.of(saga).backend, saga=saga)

    def handle(self, saga: Saga, saga_id: str) -> SagaResult:
        """A handle to an existing execution of `saga`."""
        return SagaResult(validate_saga_id(saga_id), backend_for(saga.app, saga.backend), saga=saga)

    def cancel(self, saga: Saga, saga_id: str, reason: str | None) -> bool:
        """Cancel an execution of `saga` (see `SagaResult.cancel`)."""
        return cancel(Runtime.of(saga), saga_id, reason)

    def settle(
        self, saga: Saga, saga_id: str, step: str, output: Any, error: str | None
    ) -> external.StepCompletion:
        """Record an external step's outcome (see `SagaResult.complete_step`)."""
        return external.settle(Runtime.of(saga), saga_id, step, output=output, error=error)

    def revert(self, saga: Saga, saga_id: str, reason: str | None) -> None:
        """Revert a completed execution (see `SagaResult.revert`)."""
        operator.revert(Runtime.of(saga), saga_id, reason)


registry.set_launcher(Client())
