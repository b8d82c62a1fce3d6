"""The memory store meets the SagaBackend contract."""

from __future__ import annotations

import pkgutil
from collections.abc import Iterator

import pytest

from celery_saga.backends import MemorySagaBackend, SagaBackend
from celery_saga.models import SagaExecution, SagaStatus
from celery_saga.testing import KIT_MODULES, BackendConformance, Requirements, make_execution
from celery_saga.testing.conformance import _SUITE_TESTS


class Notifies(Requirements):
    @property
    def notifies_completion(self) -> bool:
        return True

    @property
    def renews_leases_in_one_round_trip(self) -> bool:
        return True

    @property
    def shared_between_processes(self) -> bool:
        return False  # one process's memory: the cross-process tests are skipped


class TestMemoryConformance(BackendConformance):
    requirements = Notifies()

    @pytest.fixture
    def backend(self) -> Iterator[SagaBackend]:
        return MemorySagaBackend()


def test_the_suite_refuses_a_silent_override_or_deletion_of_any_of_its_tests() -> None:
    """Whatever part of the suite a test comes from (records, leases, listing, composition)."""
    for name in (
        "test_update_step_applies_and_reports",
        "test_take_over_only_once_the_lease_is_free",
        "test_wait_times_out",
        "test_list_children_of_one_execution_newest_first_with_cursor",
    ):
        with pytest.raises(TypeError, match=f"overrides the conformance test {name}"):
            type("Silent", (BackendConformance,), {name: lambda self, backend: None})
        with pytest.raises(TypeError, match=f"deletes the conformance test {name}"):
            type("Deleting", (BackendConformance,), {name: None})

        @pytest.mark.xfail(reason="this store cannot")
        def declared(self: object, backend: object) -> None:
            """An override that says why."""

        assert type("Declared", (BackendConformance,), {name: declared}).__test__ is True


def test_every_suite_test_says_what_it_checks() -> None:
    """A store author reads the docstring of a failing test first."""
    missing = [name for name, test in _SUITE_TESTS.items() if not (test.__doc__ or "").strip()]
    assert missing == []


def test_every_module_of_the_kit_has_its_asserts_rewritten() -> None:
    """`celery_saga.testing` registers every one of its modules with pytest."""
    import celery_saga.testing

    found = {
        f"celery_saga.testing.{module.name}"
        for module in pkgutil.iter_modules(celery_saga.testing.__path__)
    }
    assert found == set(KIT_MODULES)


def test_a_failing_kit_check_shows_the_values_it_compared() -> None:
    """Not a bare AssertionError: pytest rewrote the installed kit's asserts."""

    class Forgetful(MemorySagaBackend):
        def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
            return make_execution(name="should-not-be-found")

    with pytest.raises(AssertionError, match="should-not-be-found"):
        TestMemoryConformance().test_get_unknown_returns_none(Forgetful())


def test_a_store_that_is_not_shared_skips_the_cross_process_tests() -> None:
    """With `shared_between_processes` false the tests skip, saying why."""
    with pytest.raises(pytest.skip.Exception, match="shared_between_processes"):
        TestMemoryConformance().test_one_process_creates_another_reads_and_compares_and_sets(
            MemorySagaBackend()
        )


def test_the_cross_process_tests_catch_a_store_that_is_not_shared() -> None:
    """Run on the memory store as if it were shared, the first one fails: what one child
    process created, the next one does not find (KeyError from its step write)."""

    class Claims(Requirements):
        @property
        def shared_between_processes(self) -> bool:
            return True

    class Pretending(BackendConformance):
        requirements = Claims()

        @pytest.fixture
        def backend(self) -> SagaBackend:
            return MemorySagaBackend()

    with pytest.raises(pytest.fail.Exception, match="KeyError"):
        Pretending().test_one_process_creates_another_reads_and_compares_and_sets(
            MemorySagaBackend()
        )


def test_a_record_of_schema_1_reads_with_defaults_and_takes_the_new_fields() -> None:
    """Kept as celery-saga 0.3 wrote it: no parent link, no revert reason, no step kinds."""
    store = MemorySagaBackend()
    execution = make_execution()
    store.create(execution)
    entry = store._entries[execution.saga_id]
    for name in ("parent_id", "parent_step", "revert_reason"):
        del entry.header[name]
    entry.header["schema"] = 1
    for step in entry.steps.values():
        del step["kind"], step["child_id"]
    got = store.get(execution.saga_id)
    assert got is not None
    assert (got.schema, got.parent_id, got.parent_step, got.revert_reason) == (1, None, None, None)
    assert [(s.kind, s.child_id) for s in got.steps] == [("task", None)] * 3
    assert store.list().items[0].parent_id is None
    child = make_execution(parent_id=execution.saga_id, parent_step=0)
    store.create(child)
    assert store.update_step(execution.saga_id, 0, {"child_id": child.saga_id}).applied
    assert store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})
    assert store.update_saga(execution.saga_id, {"revert_reason": "back"})
    got = store.get(execution.saga_id)
    assert got is not None
    assert (got.step(0).child_id, got.revert_reason) == (child.saga_id, "back")
    assert [s.saga_id for s in store.list(parent_id=execution.saga_id).items] == [child.saga_id]
