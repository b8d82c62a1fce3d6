"""Sphinx configuration for the celery-saga documentation (built by ``nox -s docs``)."""

from __future__ import annotations

from celery_saga.version import __version__

project = "celery-saga"
author = "The celery-saga developers"
copyright = "The celery-saga developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# `name` in docstrings links to the object when Sphinx knows it (plain text otherwise).
default_role = "py:obj"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# celery_saga.contrib.django imports Django, which the docs build does not install.
autodoc_mock_imports = ["django"]
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {
    "description": "The saga pattern for Celery",
    "fixed_sidebar": True,
}
