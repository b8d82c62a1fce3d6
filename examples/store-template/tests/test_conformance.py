"""The store passes core's conformance suite, found by its URL scheme alone.

The store is not imported here: `backend_from_url` finds it through the entry point
in pyproject.toml, as an application's ``saga_backend`` setting does. Run with the
package installed (``pip install .[test]``), from this folder: ``python -m pytest``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_saga.backends import SagaBackend, backend_from_url, installed_schemes
from celery_saga.testing import BackendConformance, Requirements


def test_the_scheme_is_installed_by_the_entry_point() -> None:
    assert installed_schemes()["mystore"] == "celery_saga_mystore:MyStore"


class MyStoreRequirements(Requirements):
    """What this store does not do; each property guards tests that are skipped, saying so.

    Override only what your store lacks (or, like `notifies_completion`, has beyond the
    defaults): see `celery_saga.testing.Requirements` for the list.
    """

    @property
    def shared_between_processes(self) -> bool:
        return False  # a dict in one process: delete this once the store uses a server


class TestMyStoreConformance(BackendConformance):
    requirements = MyStoreRequirements()

    @pytest.fixture
    def backend(self) -> Iterator[SagaBackend]:
        """A fresh, empty store for each test (on a server: a database or key prefix of
        the test's own, dropped afterwards)."""
        store = backend_from_url("mystore://")
        assert type(store).__name__ == "MyStore"
        yield store
        store.close()

    # A test the store cannot pass is overridden, marked with the reason, e.g.:
    #
    # @pytest.mark.xfail(reason="the server cannot list by creation time with a cursor")
    # def test_list_cursor_never_repeats_or_skips_while_others_write(self, backend):
    #     super().test_list_cursor_never_repeats_or_skips_while_others_write(backend)
    #
    # Overriding one without the mark, or deleting one, raises TypeError.
