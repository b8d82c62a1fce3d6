"""The example store passes core's conformance suite, found by its URL scheme alone.

The store is never imported here: `backend_from_url` finds it through the entry
point this package declares, which is how an application meets it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_saga.backends import SagaBackend, backend_from_url, installed_schemes
from celery_saga.testing import BackendConformance


def test_the_scheme_is_installed_by_the_entry_point() -> None:
    assert installed_schemes()["examplestore"] == "celery_saga_example_store:ExampleStore"


class TestExampleStoreConformance(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[SagaBackend]:
        store = backend_from_url(f"examplestore:///{tmp_path / 'sagas.db'}")
        assert type(store).__name__ == "ExampleStore"
        yield store
        store.close()
