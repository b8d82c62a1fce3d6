"""The memory store meets the SagaBackend contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_saga.backends import MemorySagaBackend, SagaBackend
from celery_saga.testing import BackendConformance, Requirements


class Notifies(Requirements):
    @property
    def notifies_completion(self) -> bool:
        return True

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        return True


class TestMemoryConformance(BackendConformance):
    requirements = Notifies()

    @pytest.fixture
    def backend(self) -> Iterator[SagaBackend]:
        return MemorySagaBackend()
