"""`setting()` reads what Celery's own ``app.conf.get`` reads, for every way a setting is made.

It looks an unset name up without Celery's KeyError path (a step reads two settings
that are nearly always unset), so each way of configuring an app is checked here
against Celery's answer: a plain app, ``conf.update``, ``config_from_object``, a
namespaced configuration (Django's ``CELERY_`` prefix) and a finalized app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from celery_saga.config import DEFAULTS, _unset, setting

NAME = "saga_lease_seconds"


class Plain:
    saga_lease_seconds = 9.0


class Namespaced:
    CELERY_SAGA_LEASE_SECONDS = 11.0


class NamespacedLowerCase:
    """Celery also reads the plain name under a namespace."""

    saga_lease_seconds = 12.0


def bare(app: Celery) -> None:
    """Nothing configured."""


def updated(app: Celery) -> None:
    app.conf.update(saga_lease_seconds=7.0)


def from_object(app: Celery) -> None:
    app.config_from_object(Plain)


def namespaced(app: Celery) -> None:
    app.config_from_object(Namespaced, namespace="CELERY")


def namespaced_lower_case(app: Celery) -> None:
    app.config_from_object(NamespacedLowerCase, namespace="CELERY")


def namespaced_unset(app: Celery) -> None:
    app.config_from_object(object(), namespace="CELERY")


def namespaced_then_updated(app: Celery) -> None:
    app.config_from_object(Namespaced, namespace="CELERY")
    app.conf.update(CELERY_SAGA_LEASE_SECONDS=13.0)


def finalized(configure: Callable[[Celery], None]) -> Callable[[Celery], None]:
    def both(app: Celery) -> None:
        configure(app)
        app.finalize()
        app.conf.get("broker_url")  # the configuration is read and fixed

    both.__name__ = f"finalized_{configure.__name__}"
    return both


CASES: list[tuple[Callable[[Celery], None], Any]] = [
    (bare, None),
    (updated, 7.0),
    (from_object, 9.0),
    (namespaced, 11.0),
    (namespaced_lower_case, 12.0),
    (namespaced_unset, None),
    (namespaced_then_updated, 13.0),
    (finalized(bare), None),
    (finalized(updated), 7.0),
    (finalized(from_object), 9.0),
    (finalized(namespaced), 11.0),
    (finalized(namespaced_unset), None),
]


@pytest.mark.parametrize(("configure", "value"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_a_setting_is_what_celery_reads_or_its_default(
    configure: Callable[[Celery], None], value: Any
) -> None:
    app = Celery(f"settings-{configure.__name__}", set_as_current=False)
    configure(app)
    assert app.conf.get(NAME) == value  # what Celery itself reads
    assert _unset(app.conf, NAME) is (value is None)
    assert setting(app, NAME) == (DEFAULTS[NAME] if value is None else value)


def test_a_changed_setting_is_read_anew() -> None:
    app = Celery("settings-changed", set_as_current=False)
    assert setting(app, NAME) == DEFAULTS[NAME]
    app.conf.update(saga_lease_seconds=3.0)
    assert setting(app, NAME) == 3.0
    app.conf.update(saga_lease_seconds=None)  # None means "not set": the default
    assert setting(app, NAME) == DEFAULTS[NAME]


def test_a_configuration_that_is_not_celerys_view_is_asked_directly() -> None:
    assert _unset({"saga_lease_seconds": 1.0}, NAME) is False
    assert _unset(object(), NAME) is False


def test_no_app_gives_the_defaults() -> None:
    assert all(setting(None, name) == default for name, default in DEFAULTS.items())
