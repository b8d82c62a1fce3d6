"""The library's logger: every record carries the saga id and step."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("celery_saga")


def log(level: int, saga_id: str, step: int | None, message: str, *args: Any, **kw: Any) -> None:
    """Log `message` with ``saga_id``/``saga_step`` as extra fields and in the text."""
    if not logger.isEnabledFor(level):
        return
    where = f"saga {saga_id}" if step is None else f"saga {saga_id} step {step}"
    logger.log(
        level,
        f"[{where}] {message}",
        *args,
        extra={"saga_id": saga_id, "saga_step": step},
        **kw,
    )
