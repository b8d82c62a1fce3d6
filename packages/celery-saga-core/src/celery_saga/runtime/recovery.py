"""The recovery pass: find executions without progress and move them on.

Run it from Celery beat (the task ``celery_saga.recover``) or by hand
(``celery -A proj saga recover``). It lists the active executions of every saga
registered on the app, from the indexes of their stores, and resumes those whose
last write is older than `stalled_after` seconds, or whose deadline has passed.
Every action is a compare-and-set, so running it twice, or on two machines at
once, changes nothing twice. A record that cannot be read (damaged, or from a
newer schema), or a listing that fails, is reported in the report's errors and
the pass goes on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import shared_task

from celery_saga import registry
from celery_saga.config import setting
from celery_saga.errors import SagaError, read_error
from celery_saga.models import SagaStatus, SagaSummary, now
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.leases import lease_seconds
from celery_saga.runtime.log import log, logger
from celery_saga.runtime.resume import Resumed, resume

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


def _listed(
    report: RecoveryReport,
    backend: SagaBackend,
    name: str,
    status: SagaStatus,
    created_before: float | None = None,
) -> list[SagaSummary]:
    """What a listing yields; a failure (e.g. on a bad row) is reported, not raised."""
    found: list[SagaSummary] = []
    try:
        found.extend(_pages(backend, name=name, status=status, created_before=created_before))
    except Exception as exc:  # one bad listing must not stop the pass
        reason = (
            f"listing the {status.value} executions of saga {name!r} failed (those not "
            f"listed were skipped): {type(exc).__name__}: {exc}"
        )
        logger.error("saga recovery: %s", reason)
        report.errors.append((name, reason))
    return found


def recover(app: Celery, *, stalled_after: float | None = None) -> RecoveryReport:
    """Resume every stalled or overdue execution of the sagas registered on `app`.

    An execution is looked at once it has not been written for a lease period (or
    for `stalled_after`, if shorter): a live worker renews its leases without writing
    the execution, so this finds expired leases within about two lease periods.
    What is done with it is `resume`'s decision: attempts under live leases are left
    alone; attempts sent and never started are sent again after `stalled_after`.
    """
    stalled = float(
        setting(app, "saga_recovery_stalled_after") if stalled_after is None else stalled_after
    )
    cutoff = now() - min(stalled, lease_seconds(app))
    report = RecoveryReport()
    seen: set[str] = set()
    for name, saga in sorted(registry.registered().items()):
        if saga.app is not app:
            continue
        try:
            rt = Runtime.of(saga)
        except Exception as exc:  # e.g. a store URL that no installed store handles
            reason = str(exc) if isinstance(exc, SagaError) else f"{type(exc).__name__}: {exc}"
            logger.error("saga recovery: saga %r skipped: %s", name, reason)
            report.errors.append((name, reason))
            continue
        candidates: list[SagaSummary] = []
        for status in _ACTIVE:
            listed = _listed(report, rt.backend, name, status)
            candidates += [s for s in listed if s.updated_at < cutoff]
        if rt.definition.deadline is not None:
            overdue = now() - rt.definition.deadline
            candidates += _listed(report, rt.backend, name, SagaStatus.RUNNING, overdue)
        for summary in candidates:
            if summary.saga_id in seen:
                continue
            seen.add(summary.saga_id)
            report.examined += 1
            try:
                execution = rt.backend.get(summary.saga_id)
            except Exception as exc:  # a bad record: report it and go on with the others
                reason = read_error(summary.saga_id, exc)
                log(logging.ERROR, summary.saga_id, None, "recovery skipped it: %s", reason)
                report.errors.append((summary.saga_id, reason))
                continue
            if execution is None or execution.status not in _ACTIVE:
                continue
            try:
                outcome = resume(rt, execution, stalled_after=stalled)
            except Exception as exc:  # one broken execution must not stop the pass
                log(logging.ERROR, summary.saga_id, None, "recovery failed: %r", exc, exc_info=True)
                report.errors.append((summary.saga_id, repr(exc)))
                continue
            report.resumed.append(outcome)
            if outcome.acted:
                log(logging.WARNING, summary.saga_id, None, "recovered: %s", outcome.action)
    logger.info(
        "saga recovery: examined %s, acted on %s, errors %s",
        report.examined,
        report.acted,
        len(report.errors),
    )
    return report


@shared_task(
    name=RECOVER_TASK,
    acks_late=True,
    reject_on_worker_lost=True,  # type: ignore[untyped-decorator]
    ignore_result=True,
    serializer="json",
)
def recover_task(stalled_after: float | None = None) -> dict[str, object]:
    """The recovery pass as a Celery task, for beat: ``{"task": "celery_saga.recover"}``."""
    from celery import current_task

    return recover(current_task.app, stalled_after=stalled_after).as_dict()
