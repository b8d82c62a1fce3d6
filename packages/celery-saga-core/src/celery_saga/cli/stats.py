"""``celery saga stats``: how the executions of a time window went, from the listing.

It pages through ``store.list(created_after=...)`` (the store's creation-time index),
so it reads headers only, never steps. Rates are shares of the *finished* executions
of the window: ``failure_rate`` ended FAILED (a compensation could not be done; an
operator must look), ``compensation_rate`` were rolled back (COMPENSATED, CANCELLED
or REVERTED). Durations (p50, p95, nearest rank) run from creation to finish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import click

from celery_saga.cli.commands import EXIT_USAGE, Duration, _fail, _not_found, _store, saga
from celery_saga.errors import StoreNotFound
from celery_saga.models import TERMINAL_STATUSES, SagaStatus, SagaSummary, now
from celery_saga.views import iso

#: Finished statuses that mean the saga's steps were compensated (rolled back).
ROLLED_BACK = frozenset({SagaStatus.COMPENSATED, SagaStatus.CANCELLED, SagaStatus.REVERTED})
_PAGE = 1000


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank `p`th percentile of `values` (None if there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def summarise(items: Iterable[SagaSummary]) -> dict[str, Any]:
    """Counts by status, the two rates and the duration percentiles of `items`."""
    listed = list(items)
    by_status = {s.value: 0 for s in SagaStatus}
    durations: list[float] = []
    for item in listed:
        by_status[item.status.value] += 1
        if item.status in TERMINAL_STATUSES and item.finished_at is not None:
            durations.append(max(0.0, item.finished_at - item.created_at))
    finished = sum(by_status[s.value] for s in TERMINAL_STATUSES)
    failed = by_status[SagaStatus.FAILED.value]
    rolled_back = sum(by_status[s.value] for s in ROLLED_BACK)
    return {
        "total": len(listed),
        "by_status": by_status,
        "finished": finished,
        "failure_rate": failed / finished if finished else None,
        "compensation_rate": rolled_back / finished if finished else None,
        "duration_p50": percentile(durations, 50),
        "duration_p95": percentile(durations, 95),
    }


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


@saga.command()
@click.option(
    "--since",
    type=Duration(),
    default="24h",
    show_default=True,
    help="The window: executions created at most this long ago.",
)
@click.option("--name", default=None, help="Only executions of this saga.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def stats(ctx: click.Context, since: float, name: str | None, as_json: bool) -> None:
    """Counts by status and by saga, failure and compensation rates, p50/p95 durations.

    Over the executions created in the window (--since, default 24h); rates are
    shares of the finished ones.
    """
    store = _store(ctx)
    until = now()
    start = until - since
    items: list[SagaSummary] = []
    cursor: str | None = None
    try:
        while True:
            page = store.list(name=name, created_after=start, limit=_PAGE, cursor=cursor)
            items += page.items
            cursor = page.cursor
            if not cursor:
                break
    except StoreNotFound as exc:
        _not_found(store, exc)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    by_name: dict[str, list[SagaSummary]] = {}
    for item in items:
        by_name.setdefault(item.saga_name, []).append(item)
    report = {
        "since": iso(start),
        "until": iso(until),
        "window_seconds": since,
        "name": name,
        **summarise(items),
        "by_name": {n: summarise(by_name[n]) for n in sorted(by_name)},
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    _print(report)


def _print(report: dict[str, Any]) -> None:
    def counts(part: dict[str, Any]) -> str:
        return ", ".join(f"{n} {s}" for s, n in part["by_status"].items() if n) or "none"

    click.echo(f"executions created from {report['since']} to {report['until']}: {report['total']}")
    click.echo(f"  by status: {counts(report)}")
    click.echo(
        f"  finished {report['finished']}: failure rate {_percent(report['failure_rate'])}, "
        f"compensation rate {_percent(report['compensation_rate'])}; duration p50 "
        f"{_seconds(report['duration_p50'])}, p95 {_seconds(report['duration_p95'])}"
    )
    if not report["by_name"]:
        return
    click.echo(
        f"{'NAME':<28} {'TOTAL':>6} {'FINISHED':>8} {'FAILURE':>8} {'COMPENS.':>8} "
        f"{'P50':>10} {'P95':>10}  STATUSES"
    )
    for name, part in report["by_name"].items():
        click.echo(
            f"{name[:28]:<28} {part['total']:>6} {part['finished']:>8} "
            f"{_percent(part['failure_rate']):>8} {_percent(part['compensation_rate']):>8} "
            f"{_seconds(part['duration_p50']):>10} {_seconds(part['duration_p95']):>10}  "
            f"{counts(part)}"
        )
