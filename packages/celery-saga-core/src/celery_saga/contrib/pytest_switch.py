"""The ``pytest11`` entry point of celery-saga: a switch, off until turned on.

pytest loads every installed ``pytest11`` plugin, so the fixtures themselves
(`celery_saga.contrib.pytest`) are not registered here: this module only adds the
``--celery-saga`` option and the ``celery_saga`` ini setting, and loads the fixtures
when one of them is given. Enabling them with ``-p celery_saga.contrib.pytest`` or
``pytest_plugins`` works as well, and together with the switch loads them once.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "celery_saga.contrib.pytest"


def pytest_addoption(parser: Any) -> None:
    """``--celery-saga`` on the command line, ``celery_saga = true`` in the ini file."""
    parser.addini(
        "celery_saga",
        type="bool",
        default=False,
        help=f"load celery-saga's fixtures ({PLUGIN})",
    )
    parser.getgroup("celery-saga").addoption(
        "--celery-saga",
        action="store_true",
        default=False,
        dest="celery_saga",
        help=f"load celery-saga's fixtures ({PLUGIN})",
    )


def pytest_configure(config: Any) -> None:
    """Load the fixtures when the switch is on (once, whatever else enabled them)."""
    if not (config.getoption("celery_saga") or config.getini("celery_saga")):
        return
    manager = config.pluginmanager
    if manager.get_plugin(PLUGIN) is None:
        manager.import_plugin(PLUGIN)
