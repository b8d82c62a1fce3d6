"""Packages under tests/plugin are tested in a venv of their own, by `nox -s plugin`.

A run of the workspace's suite leaves them out: their tests need the package
installed as a wheel, and each carries its own pytest configuration.
"""

collect_ignore = ["celery-saga-example-store"]
