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


def test_the_suite_refuses_a_silent_override_or_deletion_of_any_of_its_tests() -> None:
    """Whatever part of the suite a test comes from (records, leases, listing)."""
    for name in (
        "test_update_step_applies_and_reports",
        "test_take_over_only_once_the_lease_is_free",
        "test_wait_times_out",
    ):
        with pytest.raises(TypeError, match=f"overrides the conformance test {name}"):
            type("Silent", (BackendConformance,), {name: lambda self, backend: None})
        with pytest.raises(TypeError, match=f"deletes the conformance test {name}"):
            type("Deleting", (BackendConformance,), {name: None})

        @pytest.mark.xfail(reason="this store cannot")
        def declared(self: object, backend: object) -> None:
            """An override that says why."""

        assert type("Declared", (BackendConformance,), {name: declared}).__test__ is True
