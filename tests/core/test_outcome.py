"""`SagaBackend.wait_outcome`, what `SagaResult.get()` waits with: the default reads the
execution in full; an outcome a store learned from its announcement of the end (no
execution) gives a completed saga's output at once, and any other end is read."""

from __future__ import annotations

from typing import Any

import pytest

from celery_saga import SagaCompensated, SagaResult
from celery_saga.backends import MemorySagaBackend, Outcome
from celery_saga.models import SagaStatus
from celery_saga.testing import make_execution


class Announcing(MemorySagaBackend):
    """A memory store whose waits end with what an announcement said, counting its reads."""

    def __init__(self, said: Outcome) -> None:
        super().__init__()
        self.said = said
        self.reads = 0

    def get(self, saga_id: str) -> Any:
        self.reads += 1
        return super().get(saga_id)

    def wait_outcome(self, saga_id: str, timeout: float | None = None) -> Outcome | None:
        return self.said


def test_the_default_wait_outcome_is_the_execution_read_in_full() -> None:
    store = MemorySagaBackend()
    execution = make_execution()
    store.create(execution)
    changes = {"status": SagaStatus.COMPLETED, "output": {"total": 3}}
    assert store.update_saga(execution.saga_id, changes)
    outcome = store.wait_outcome(execution.saga_id, 5)
    assert outcome is not None and outcome.status is SagaStatus.COMPLETED
    assert outcome.output == {"total": 3}
    assert outcome.execution is not None and outcome.execution.saga_id == execution.saga_id
    assert MemorySagaBackend().wait_outcome("nope", 0.01) is None  # timed out


def test_get_returns_an_announced_output_without_reading_the_execution() -> None:
    store = Announcing(Outcome(SagaStatus.COMPLETED, {"total": 3}))
    execution = make_execution()
    store.create(execution)
    assert SagaResult(execution.saga_id, store).get(timeout=5) == {"total": 3}
    assert store.reads == 0


def test_get_reads_an_announced_end_other_than_a_completion() -> None:
    store = Announcing(Outcome(SagaStatus.COMPENSATED))
    execution = make_execution()
    store.create(execution)
    assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPENSATED})
    with pytest.raises(SagaCompensated) as info:
        SagaResult(execution.saga_id, store).get(timeout=5)
    assert info.value.execution.saga_id == execution.saga_id
    assert store.reads == 1
