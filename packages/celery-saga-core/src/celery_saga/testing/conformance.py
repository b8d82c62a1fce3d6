"""The conformance suite every state store runs, ours and third parties' alike.

Subclass `BackendConformance` in a test module and provide a `backend` fixture
that returns a fresh, empty store::

    from celery_saga.testing import BackendConformance

    class TestMyStore(BackendConformance):
        @pytest.fixture
        def backend(self):
            store = MyStore.from_url("mystore://localhost/test")
            yield store
            store.close()

A store that cannot meet a test must say so: override it with
``@pytest.mark.xfail(reason=...)``. Overriding a suite test without that mark,
or deleting one, is refused when the class is defined.
"""

from __future__ import annotations

from typing import Any

from celery_saga.testing.attempts import AttemptRecordTests
from celery_saga.testing.composition import CompositionTests
from celery_saga.testing.finishing import FinishingTests
from celery_saga.testing.kit import Requirements, SuiteBase, make_execution
from celery_saga.testing.lease_tests import LeaseTests
from celery_saga.testing.listing import ListingTests
from celery_saga.testing.processes import ProcessTests
from celery_saga.testing.records import RecordTests
from celery_saga.testing.waiting import AsyncWaitTests

__all__ = ["BackendConformance", "Requirements", "SuiteBase", "make_execution"]

#: Every test of the suite, by name, from all its parts.
_SUITE_TESTS = {
    name: member
    for part in (
        RecordTests,
        FinishingTests,
        LeaseTests,
        ListingTests,
        CompositionTests,
        AttemptRecordTests,
        AsyncWaitTests,
        ProcessTests,
    )
    for name, member in vars(part).items()
    if name.startswith("test_")
}


class BackendConformance(
    RecordTests,
    FinishingTests,
    LeaseTests,
    ListingTests,
    CompositionTests,
    AttemptRecordTests,
    AsyncWaitTests,
    ProcessTests,
):
    """The contract of `celery_saga.backends.SagaBackend`, as pytest tests."""

    __test__ = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True
        for name, member in _SUITE_TESTS.items():
            override = cls.__dict__.get(name)
            if name in cls.__dict__ and override is None:
                raise TypeError(f"{cls.__name__} deletes the conformance test {name}")
            if override is not None and override is not member:
                marks = getattr(override, "pytestmark", [])
                if not any(m.name == "xfail" and m.kwargs.get("reason") for m in marks):
                    raise TypeError(
                        f"{cls.__name__} overrides the conformance test {name}: mark the "
                        "override @pytest.mark.xfail(reason='why this store cannot') instead"
                    )
