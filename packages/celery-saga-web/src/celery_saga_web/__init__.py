"""celery-saga-web: a web view of saga executions (``celery -A proj saga web``).

`create_app(store, celery_app=..., allow_actions=..., token=...)` is the Starlette
application; the ``web`` subcommand serves it with uvicorn.
"""

from __future__ import annotations

from celery_saga_web.app import create_app
from celery_saga_web.version import __version__

__all__ = ["__version__", "create_app"]
