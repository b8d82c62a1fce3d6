"""The Jinja2 templates (package data) and the filters they use to show values.

Autoescaping is on for every template: whatever a store holds (task names, outputs,
errors) reaches the page as text, never as markup. Only the SVG that core's graph
and timeline renderers return is inserted as markup (they escape what they draw).
"""

from __future__ import annotations

import json
import time
from typing import Any

import jinja2

from celery_saga.models import SagaStatus, StepStatus

#: Status names as CSS class suffixes (the colours are in static/web.css).
STATUS_CLASSES = {s.value for s in SagaStatus} | {s.value for s in StepStatus}


def when(ts: Any) -> str:
    """Epoch seconds (or an ISO string already) as ``2026-12-02 14:03:01Z``; "-" if unknown."""
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, str):
        return ts
    try:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(ts)))
    except (OverflowError, ValueError, OSError):
        return "-"


def took(seconds: Any) -> str:
    """A duration in seconds, short: ``812ms``, ``4.2s``, ``3m 12s``, ``2h 5m``; "-" if unknown."""
    if not isinstance(seconds, int | float) or seconds != seconds or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"
    return f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"


def between(start: Any, end: Any) -> str:
    """The duration from `start` to `end` (epoch seconds), or "-"."""
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return "-"
    return took(end - start)


def pretty(value: Any) -> str:
    """A stored value as indented JSON text (escaped later, like any text)."""
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def status_class(status: Any) -> str:
    """The CSS class of a status: ``status-<name>`` for a known one, else ``status-unknown``."""
    value = getattr(status, "value", status)
    return f"status-{value}" if value in STATUS_CLASSES else "status-unknown"


def environment() -> jinja2.Environment:
    """The template environment: package templates, autoescape on, undefined is an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("celery_saga_web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when, took=took, between=between, pretty=pretty, status_class=status_class
    )
    return env
