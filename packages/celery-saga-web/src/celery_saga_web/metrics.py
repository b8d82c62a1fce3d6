"""``/metrics``: what the store holds, in Prometheus text format, read at scrape time.

A custom collector in a registry of its own (never prometheus-client's global one,
so two apps in one process never mix their figures). Each scrape reads the store:

- ``celery_saga_executions{saga,status}`` (gauge): stored executions by saga name and
  status, from the store's listings (at most ``saga_web_metrics_max_executions`` per
  status; ``celery_saga_executions_truncated{status}`` is 1 where that cap was hit).
- Executions *finished within the window* (``saga_web_metrics_window`` seconds, 3600 by
  default; at most ``saga_web_metrics_max_details`` of them are read whole) give:
  ``celery_saga_finished_executions{saga,status}`` (gauge), the histograms
  ``celery_saga_step_duration_seconds{saga,task}`` (every forward attempt that
  finished: the step's last one and the earlier ones its history keeps) and
  ``celery_saga_compensation_duration_seconds{saga,task}`` (the same for compensations),
  ``celery_saga_recovered_steps{saga}`` (steps that recovery sent again: ``sends`` > 0 or
  a ``taken_over`` entry in their history) and ``celery_saga_takeovers{saga}``
  (attempts recovery gave up and replaced: the step's ``taken_over`` history entries,
  or its ``sends`` where that is more, for records written before steps kept a history).

The window figures describe the executions in the window at scrape time, so they go
down as executions leave it: the recoveries and take-overs are gauges, not counters,
and the histograms are read as they are (``histogram_quantile(0.95,
celery_saga_step_duration_seconds_bucket)``), not through ``rate()``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from celery_saga.backends.base import SagaBackend
from celery_saga.errors import StoreNotFound
from celery_saga.models import SagaExecution, SagaStatus, SagaSummary, StepRecord, now

logger = logging.getLogger("celery_saga_web")

#: Celery settings read by the metrics, with their defaults.
DEFAULTS: dict[str, float] = {
    "saga_web_metrics_window": 3600.0,
    "saga_web_metrics_max_executions": 10_000,
    "saga_web_metrics_max_details": 1_000,
}
#: Histogram bucket bounds, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_PAGE = 1000


def setting(app: Any, name: str) -> float:
    """A metrics setting from the Celery app's configuration, or its default."""
    value = app.conf.get(name) if app is not None else None
    return float(value) if value is not None else DEFAULTS[name]


def _bound(value: float) -> str:
    """A bucket bound as Prometheus writes it (``0.5``, ``1.0``, ``3600.0``)."""
    return repr(float(value))


class _Durations:
    """Observations for one histogram family, bucketed when exported."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)

    def add(self, saga: str, task: str | None, start: Any, end: Any) -> None:
        numbers = isinstance(start, int | float) and isinstance(end, int | float)
        if task and numbers and end >= start:
            self.values[(saga, task)].append(float(end - start))

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=["saga", "task"])
        for (saga, task), values in sorted(self.values.items()):
            buckets = [(_bound(b), float(sum(v <= b for v in values))) for b in BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            family.add_metric([saga, task], buckets, sum_value=sum(values))
        return family


def _forward_attempts(record: StepRecord) -> Iterator[tuple[Any, Any]]:
    yield record.started_at, record.finished_at
    for entry in record.history or ():
        if entry.get("part") == "forward":
            yield entry.get("started_at"), entry.get("finished_at")


def _compensation_attempts(record: StepRecord) -> Iterator[tuple[Any, Any]]:
    yield record.comp_started_at, record.comp_finished_at
    for entry in record.history or ():
        if entry.get("part") == "compensation":
            yield entry.get("started_at"), entry.get("finished_at")


def _taken_over(record: StepRecord) -> int:
    return sum(1 for e in record.history or () if e.get("outcome") == "taken_over")


class StoreCollector(Collector):
    """Reads the store at each scrape and reports the figures described in this module."""

    def __init__(self, store: SagaBackend, app: Any = None) -> None:
        self.store = store
        self.app = app

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration: the store is read at scrape time

    def _scan(self, status: SagaStatus, cap: int, **filters: Any) -> tuple[list[SagaSummary], bool]:
        found: list[SagaSummary] = []
        cursor = None
        while len(found) < cap:
            page = self.store.list(
                status=status, limit=min(_PAGE, cap - len(found)), cursor=cursor, **filters
            )
            found.extend(page.items)
            cursor = page.cursor
            if cursor is None:
                return found, False
        return found, cursor is not None

    def collect(self) -> Iterable[Metric]:
        executions = GaugeMetricFamily(
            "celery_saga_executions",
            "Stored saga executions by saga name and status.",
            labels=["saga", "status"],
        )
        truncated = GaugeMetricFamily(
            "celery_saga_executions_truncated",
            "1 where the count of a status stopped at saga_web_metrics_max_executions.",
            labels=["status"],
        )
        window = setting(self.app, "saga_web_metrics_window")
        finished: Counter[tuple[str, str]] = Counter()
        steps, compensations = _Durations(), _Durations()
        recovered: Counter[str] = Counter()
        takeovers: Counter[str] = Counter()
        try:
            recent = self._collect_counts(executions, truncated, window)
            for execution in self._details(recent):
                finished[(execution.saga_name, execution.status.value)] += 1
                for record in execution.steps:
                    name = execution.saga_name
                    for start, end in _forward_attempts(record):
                        steps.add(name, record.task_name, start, end)
                    for start, end in _compensation_attempts(record):
                        compensations.add(name, record.compensation_task_name, start, end)
                    taken = _taken_over(record)
                    if record.sends > 0 or taken:
                        recovered[name] += 1
                    takeovers[name] += max(taken, record.sends)
        except StoreNotFound:
            pass  # nothing stored yet: every figure is empty
        yield executions
        yield truncated
        yield GaugeMetricFamily(
            "celery_saga_metrics_window_seconds",
            "The window of the finished-execution figures (saga_web_metrics_window).",
            value=window,
        )
        finished_family = GaugeMetricFamily(
            "celery_saga_finished_executions",
            "Executions finished within the window, by saga name and status.",
            labels=["saga", "status"],
        )
        for (saga, status), count in sorted(finished.items()):
            finished_family.add_metric([saga, status], float(count))
        yield finished_family
        yield steps.family(
            "celery_saga_step_duration_seconds",
            "Durations of the finished forward attempts of steps, in executions finished "
            "within the window.",
        )
        yield compensations.family(
            "celery_saga_compensation_duration_seconds",
            "Durations of the finished compensation attempts, in executions finished within "
            "the window.",
        )
        yield _by_saga(
            "celery_saga_recovered_steps",
            "Steps that recovery sent again (sends > 0 or a taken_over attempt), in "
            "executions finished within the window.",
            recovered,
        )
        yield _by_saga(
            "celery_saga_takeovers",
            "Attempts that recovery gave up and replaced, in executions finished within the "
            "window.",
            takeovers,
        )

    def _collect_counts(
        self, executions: GaugeMetricFamily, truncated: GaugeMetricFamily, window: float
    ) -> list[SagaSummary]:
        cap = int(setting(self.app, "saga_web_metrics_max_executions"))
        since = now() - window
        recent: list[SagaSummary] = []
        for status in SagaStatus:
            items, cut = self._scan(status, cap)
            truncated.add_metric([status.value], 1.0 if cut else 0.0)
            for name, count in sorted(Counter(s.saga_name for s in items).items()):
                executions.add_metric([name, status.value], float(count))
            if status.is_terminal:
                recent.extend(s for s in items if s.finished_at and s.finished_at >= since)
        return recent

    def _details(self, recent: list[SagaSummary]) -> Iterator[SagaExecution]:
        cap = int(setting(self.app, "saga_web_metrics_max_details"))
        recent.sort(key=lambda s: s.finished_at or 0.0, reverse=True)
        for summary in recent[:cap]:
            try:
                execution = self.store.get(summary.saga_id)
            except Exception as exc:  # one unreadable record must not hide the rest
                logger.warning("celery-saga-web metrics: %s skipped: %s", summary.saga_id, exc)
                continue
            if execution is not None:
                yield execution


def _by_saga(name: str, doc: str, counts: Counter[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["saga"])
    for saga, count in sorted(counts.items()):
        family.add_metric([saga], float(count))
    return family


def metrics_registry(store: SagaBackend, app: Any = None) -> CollectorRegistry:
    """A registry of its own holding the store's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, app))
    return registry


async def metrics(request: Request) -> Response:
    """``/metrics``: the registry in Prometheus text format."""
    registry: CollectorRegistry = request.app.state.metrics
    try:
        body = await run_in_threadpool(generate_latest, registry)
    except Exception as exc:  # the store does not answer: a failed scrape, said as such
        logger.warning("celery-saga-web metrics: the store does not answer: %s", exc)
        return PlainTextResponse(
            f"503: the saga store does not answer ({type(exc).__name__}: {exc})\n",
            status_code=503,
        )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
