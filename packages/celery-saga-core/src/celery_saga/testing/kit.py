"""What the conformance suite is built from: record builders, races, capabilities, fixtures.

Store authors use `make_execution` and `Requirements`; the suite's parts
(`celery_saga.testing.records`, `.lease_tests`, `.listing`, `.composition`,
`.attempts`) share `SuiteBase` and `race`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest

from celery_saga.backends.base import SagaBackend
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, StepStatus

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


def make_execution(
    *,
    steps: int = 3,
    stages: list[int] | None = None,
    name: str = "conformance",
    idempotency_key: str | None = None,
    created_at: float | None = None,
    status: SagaStatus = SagaStatus.RUNNING,
    input: dict[str, Any] | None = None,
    parent_id: str | None = None,
    parent_step: int | None = None,
) -> SagaExecution:
    """An execution with `steps` PENDING steps (`stages[i]` is step i's stage).

    With `parent_id` (and `parent_step`) it is a child saga of that execution's step.
    """
    stages = stages or list(range(steps))
    return SagaExecution(
        saga_id=str(uuid.uuid4()),
        saga_name=name,
        status=status,
        input=input if input is not None else {"order_id": "A-1", "amount": 10},
        idempotency_key=idempotency_key,
        definition_hash="0123456789abcdef",
        created_at=created_at if created_at is not None else time.time(),
        parent_id=parent_id,
        parent_step=parent_step,
        steps=[
            StepRecord(
                index=i,
                task_name=f"tasks.step{i}",
                stage=stages[i],
                compensation_task_name=f"tasks.undo{i}",
            )
            for i in range(len(stages))
        ],
    )


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) on n threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


class Requirements:
    """What a store supports; override a property to declare a capability it lacks.

    Tests guarded by a requirement are skipped, with the reason shown, when the
    store declares it does not have it.
    """

    @property
    def notifies_completion(self) -> bool:
        """`wait()` wakes on a notification rather than by polling."""
        return False

    @property
    def notifies_completion_async(self) -> bool:
        """`async_wait()` wakes on a notification rather than by polling (it overrides
        `SagaBackend.async_wait` with a `celery_saga.backends.waiting.Notifications`)."""
        return False

    @property
    def shared_between_processes(self) -> bool:
        """Workers in other processes see the same executions, and compare-and-set holds
        between processes (the `processes` part of the suite forks children that use the
        store; a store that lives in one process's memory declares this false)."""
        return True

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        """`renew_leases` renews any number of leases in one request (counted in `stats`),
        at least when every one is still held (the common case)."""
        return False

    @property
    def finishes_in_one_round_trip(self) -> bool:
        """`update_step_and_finish` writes the step and ends the saga in one request
        (counted in `stats`) rather than the default's two."""
        return False

    @property
    def expires_finished(self) -> bool:
        """Finished executions can be set to expire after a retention period (a TTL).

        A store that declares it must also override the `store_with_retention` fixture.
        """
        return False


class SuiteBase:
    """The fixtures every part of the suite uses; a store's test class overrides them."""

    __test__ = False
    requirements: ClassVar[Requirements] = Requirements()

    @pytest.fixture
    def backend(self) -> SagaBackend:
        """Provide a fresh, empty store (subclasses must override this fixture)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `backend` fixture that yields a fresh, "
            "empty SagaBackend"
        )

    @pytest.fixture
    def store_with_retention(self) -> Callable[[int], SagaBackend]:
        """Provide a factory: ``make(seconds)`` is a fresh, empty store whose finished
        executions expire `seconds` after they finish (stores that declare
        `Requirements.expires_finished` must override this fixture, and close what
        they made afterwards)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares Requirements.expires_finished: it must define a "
            "`store_with_retention` fixture that returns a factory make(seconds) -> SagaBackend"
        )
