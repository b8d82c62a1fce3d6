"""The recovery pass: find executions without progress and move them on.

Run it from Celery beat (the task ``celery_saga.recover``) or by hand
(``celery -A proj saga recover``). It lists the active executions of every saga
registered on the app, from the indexes of their stores, and resumes those whose
last write is older than `stalled_after` seconds, or whose deadline has passed.
Every action is a compare-and-set, so running it twice, or on two machines at
once, changes nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import shared_task

from celery_saga import registry
from celery_saga.config import setting
from celery_saga.errors import SagaError
from celery_saga.models import SagaStatus, SagaSummary, now
from celery_saga.runtime.engine import Resumed, Runtime, resume
from celery_saga.runtime.log import log, logger

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend

RECOVER_TASK = "celery_saga.recover"
_ACTIVE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


@dataclass
class RecoveryReport:
    """What one recovery pass looked at and did."""

    examined: int = 0
    resumed: list[Resumed] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def acted(self) -> int:
        """How many executions were moved on."""
        return sum(1 for r in self.resumed if r.acted)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form (the CLI's ``--json`` output)."""
        return {
            "examined": self.examined,
            "acted": self.acted,
            "resumed": [
                {"saga_id": r.saga_id, "action": r.action, "acted": r.acted} for r in self.resumed
            ],
            "errors": [{"saga_id": s, "error": e} for s, e in self.errors],
        }


def _pages(backend: SagaBackend, **filters: object) -> Iterator[SagaSummary]:
    cursor = None
    while True:
        page = backend.list(limit=500, cursor=cursor, **filters)  # type: ignore[arg-type]
        yield from page.items
        cursor = page.cursor
        if cursor is None:
            return


def recover(app: Celery, *, stalled_after: float | None = None) -> RecoveryReport:
    """Resume every stalled or overdue execution of the sagas registered on `app`."""
    stalled = float(
        setting(app, "saga_recovery_stalled_after") if stalled_after is None else stalled_after
    )
    cutoff = now() - stalled
    report = RecoveryReport()
    seen: set[str] = set()
    for name, saga in sorted(registry.registered().items()):
        if saga.app is not app:
            continue
        try:
            rt = Runtime.of(saga)
        except SagaError as exc:
            report.errors.append((name, str(exc)))
            continue
        candidates: list[SagaSummary] = []
        for status in _ACTIVE:
            candidates += [
                s for s in _pages(rt.backend, status=status, name=name) if s.updated_at < cutoff
            ]
        if saga.deadline is not None:
            candidates += _pages(
                rt.backend,
                status=SagaStatus.RUNNING,
                name=name,
                created_before=now() - saga.deadline,
            )
        for summary in candidates:
            if summary.saga_id in seen:
                continue
            seen.add(summary.saga_id)
            report.examined += 1
            execution = rt.backend.get(summary.saga_id)
            if execution is None or execution.status not in _ACTIVE:
                continue
            try:
                outcome = resume(rt, execution)
            except Exception as exc:  # one broken execution must not stop the pass
                log(logging.ERROR, summary.saga_id, None, "recovery failed: %r", exc, exc_info=True)
                report.errors.append((summary.saga_id, repr(exc)))
                continue
            report.resumed.append(outcome)
            if outcome.acted:
                log(logging.WARNING, summary.saga_id, None, "recovered: %s", outcome.action)
    logger.info("saga recovery: examined %s, acted on %s", report.examined, report.acted)
    return report


@shared_task(
    name=RECOVER_TASK,
    acks_late=True,
    reject_on_worker_lost=True,  # type: ignore[untyped-decorator]
    ignore_result=True,
)
def recover_task(stalled_after: float | None = None) -> dict[str, object]:
    """The recovery pass as a Celery task, for beat: ``{"task": "celery_saga.recover"}``."""
    from celery import current_task

    return recover(current_task.app, stalled_after=stalled_after).as_dict()
