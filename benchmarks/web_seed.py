"""W9's stored executions: N finished sagas in a store of their own, kept between runs.

Each W9 store (Redis, PostgreSQL) holds its executions under names of its own that
say how many it holds (`WebStore.for_kind`: Redis key prefix ``bench-web-<N>:``,
PostgreSQL table prefix ``bench_web_<N>_``), so a ``--quick`` run and a full run each
keep theirs and nothing else is touched. A run finds them and reuses them when the
store holds exactly N executions whose newest one reads back; otherwise (or with
``--w9-reseed``) it deletes everything under those names and creates them again.

The executions are made by `execution` (5 steps each, four saga names, most COMPLETED,
some COMPENSATED, FAILED, CANCELLED or REVERTED, created over the last 30 days) and
written through the store's own ``create``, one call each, by `PROCESSES` processes at
once, each with its own store object.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery_saga.backends.registry import backend_from_url
from celery_saga.ids import new_saga_id
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, StepStatus

#: Saga names of the stored executions, with how many in every 10 carry each.
NAMES = (
    ("bench.web.order", 6),
    ("bench.web.payment", 2),
    ("bench.web.shipment", 1),
    ("bench.web.refund", 1),
)
#: Statuses of the stored executions, with how many in every 100 have each.
STATUSES = (
    (SagaStatus.COMPLETED, 85),
    (SagaStatus.COMPENSATED, 8),
    (SagaStatus.FAILED, 4),
    (SagaStatus.CANCELLED, 2),
    (SagaStatus.REVERTED, 1),
)
#: The filters W9's list pages use: each matches a tenth or more of the executions.
NAME_FILTER = "bench.web.refund"
STATUS_FILTER = SagaStatus.COMPENSATED.value
#: Steps per stored execution, and the time their creation spreads over (seconds).
STEPS = 5
SPAN = 30 * 86400.0
#: Processes writing the executions at once.
PROCESSES = 4


def _pick(table: tuple[tuple[Any, int], ...], i: int) -> Any:
    """The entry of `table` that execution `i` gets (weights repeat every sum of them)."""
    slot = i % sum(weight for _, weight in table)
    for value, weight in table:
        if slot < weight:
            return value
        slot -= weight
    raise AssertionError("unreachable")


def _steps(saga_id: str, i: int, status: SagaStatus, created: float) -> list[StepRecord]:
    """The 5 steps of execution `i`: how far they got and what they left, by `status`."""
    records = []
    for k in range(STEPS):
        started = created + 0.01 + k * 0.02
        record = StepRecord(
            index=k,
            task_name=f"bench.web.step{k + 1}",
            stage=k,
            compensation_task_name=f"bench.web.undo{k + 1}",
            status=StepStatus.SUCCESS,
            attempt=1,
            task_id=f"{saga_id}-s{k}-1",
            started_at=started,
            finished_at=started + 0.015,
            output={f"step{k + 1}": i, "amount": (i * 37 + k) % 1000},
            worker="celery@bench-web",
        )
        records.append(record)
    if status is SagaStatus.COMPLETED:
        return records
    # CANCELLED after two steps (those compensated, the rest never started); COMPENSATED
    # and FAILED: step 4 failed; REVERTED: every step compensated after the saga completed.
    failed_at = 2 if status is SagaStatus.CANCELLED else 3
    for k, record in enumerate(records):
        if status is SagaStatus.REVERTED or k < failed_at:
            record.status = StepStatus.COMPENSATED
            record.comp_attempt = 1
            record.comp_started_at = created + 1 + (STEPS - k) * 0.02
            record.comp_finished_at = record.comp_started_at + 0.01
            record.compensation_data = {"refund": record.output["amount"]}
        elif k == failed_at and status is not SagaStatus.CANCELLED:
            record.status = StepStatus.FAILED
            record.output = None
            record.error = f"RuntimeError: payment {i} declined by the bank (bench data)"
        else:
            record.status = StepStatus.PENDING
            record.attempt, record.task_id = 0, None
            record.started_at = record.finished_at = record.output = record.worker = None
    if status is SagaStatus.FAILED:
        # Its compensation of step 2 failed: the saga needs an operator.
        broken = records[1]
        broken.status = StepStatus.COMPENSATION_FAILED
        broken.comp_finished_at, broken.compensation_data = None, None
        broken.comp_error = "ConnectionError: the refund service did not answer (bench data)"
    return records


def execution(i: int, n: int, now: float) -> SagaExecution:
    """Stored execution `i` of `n`: created at an even pace over the `SPAN` before `now`."""
    status = _pick(STATUSES, i)
    created = now - SPAN + i * SPAN / n
    saga_id = new_saga_id()
    steps = _steps(saga_id, i, status, created)
    ends = [r.comp_finished_at or r.finished_at or created for r in steps]
    finished = max(ends) + 0.005
    return SagaExecution(
        saga_id=saga_id,
        saga_name=_pick(NAMES, i + i // 100),  # shifted every 100: every name gets every status
        status=status,
        input={"order": i, "customer": f"customer-{i % 997}"},
        steps=steps,
        output={"order": i} if status is SagaStatus.COMPLETED else None,
        error=None if status is SagaStatus.COMPLETED else f"step 4 of execution {i} failed",
        failed_step=None if status in (SagaStatus.COMPLETED, SagaStatus.REVERTED) else 3,
        created_at=created,
        updated_at=finished,
        finished_at=finished,
        cancelled_at=finished if status is SagaStatus.CANCELLED else None,
        revert_reason="bench: reverted on request" if status is SagaStatus.REVERTED else None,
    )


def _create_part(url: str, n: int, now: float, part: int, parts: int) -> int:
    """Create executions part, part + parts, ... of `n` (in a process of its own)."""
    store = backend_from_url(url)
    try:
        made = 0
        for i in range(part, n, parts):
            store.create(execution(i, n, now))
            made += 1
        return made
    finally:
        store.close()


@dataclass(frozen=True)
class WebStore:
    """One W9 store: its kind, URL, and where its executions live (to count or drop them)."""

    kind: str
    url: str
    #: Redis: the database URL and the key prefix; SQL: the database URL and table prefix.
    database: str
    prefix: str

    @classmethod
    def for_kind(cls, kind: str, n: int, redis_db_url: str, postgres_url: str) -> WebStore:
        """The store of `kind` (``redis`` or ``postgresql``) holding `n` executions."""
        if kind == "redis":
            prefix = f"bench-web-{n}:"
            return cls(kind, f"{redis_db_url}?prefix={prefix}&ttl=0", redis_db_url, prefix)
        if kind == "postgresql":
            prefix = f"bench_web_{n}_"
            return cls(kind, f"{postgres_url}?table_prefix={prefix}", postgres_url, prefix)
        raise ValueError(f"W9 runs on the redis and postgresql stores, not {kind!r}")

    def count(self) -> int:
        """How many executions the store holds (from its index or table, not by listing)."""
        if self.kind == "redis":
            import redis

            from celery_saga.models import SagaStatus
            from celery_saga_redis.keys import Keys

            client = redis.Redis.from_url(self.database)
            keys = Keys(self.prefix)
            try:
                return sum(int(client.zcard(keys.index_status(s.value))) for s in SagaStatus)
            finally:
                client.close()
        from sqlalchemy import create_engine, func, inspect, select

        from celery_saga_sql.schema import build_tables

        engine = create_engine(self.database)
        try:
            executions = build_tables(self.prefix).executions
            if not inspect(engine).has_table(executions.name):
                return 0
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(executions)).scalar_one())
        finally:
            engine.dispose()

    def drop(self) -> None:
        """Delete every key under the prefix, or drop the prefixed tables."""
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.database)
            try:
                keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
                for i in range(0, len(keys), 500):
                    client.delete(*keys[i : i + 500])
            finally:
                client.close()
            return
        from sqlalchemy import create_engine

        from celery_saga_sql.schema import build_tables

        engine = create_engine(self.database)
        try:
            build_tables(self.prefix).metadata.drop_all(engine)
        finally:
            engine.dispose()


def forget(store: WebStore, names: Iterable[str]) -> int:
    """Delete the finished executions of these saga names (an earlier run's, left behind)."""
    backend = backend_from_url(store.url)
    deleted = 0
    try:
        for name in names:
            ids: list[str] = []
            cursor: str | None = None
            while True:  # list them all first: deleting while paging could skip some
                page = backend.list(name=name, cursor=cursor)
                ids += [item.saga_id for item in page.items if item.status.is_terminal]
                cursor = page.cursor
                if cursor is None:
                    break
            deleted += sum(1 for saga_id in ids if backend.delete(saga_id))
    finally:
        backend.close()
    return deleted


def _readable(store: WebStore) -> bool:
    """True when the newest stored execution lists and reads back with this code."""
    backend = backend_from_url(store.url)
    try:
        page = backend.list(limit=1)
        return bool(page.items) and backend.get(page.items[0].saga_id) is not None
    except Exception:  # a layout or schema of another version: seed again
        return False
    finally:
        backend.close()


def ensure(store: WebStore, n: int, *, reseed: bool = False) -> dict[str, Any]:
    """Make `store` hold exactly `n` stored executions; say whether they were kept or made.

    Returns ``{"executions", "kept", "seconds", "processes"}``: ``seconds`` is how
    long creating them took (None when they were kept from an earlier run).
    """
    if not reseed and store.count() == n and _readable(store):
        return {"executions": n, "kept": True, "seconds": None, "processes": PROCESSES}
    store.drop()
    backend = backend_from_url(store.url)
    try:
        backend.list(limit=1)  # an SQL store creates its tables: once, before the processes
    finally:
        backend.close()
    now = time.time()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        parts = [(store.url, n, now, part, PROCESSES) for part in range(PROCESSES)]
        made = sum(pool.starmap(_create_part, parts))
    seconds = time.perf_counter() - started
    if made != n or store.count() != n:
        raise SystemExit(f"W9: seeding the {store.kind} store made {store.count()} of {n}")
    return {"executions": n, "kept": False, "seconds": round(seconds, 2), "processes": PROCESSES}
