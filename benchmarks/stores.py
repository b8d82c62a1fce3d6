"""State-store benchmark: what a step costs each store, and how listing scales.

For each backend (Redis, PostgreSQL, MySQL/MariaDB, SQLite, MongoDB):

1. **Per-step cost.** Real sagas of 5 and of 50 no-op steps run in this process
   (Celery ``task_always_eager``, the store as ``saga_backend``). The store's own
   counters (`SagaBackend.stats`: round trips, bytes written) are reset before and
   read after, and every store call is attributed to the operation that made it,
   so the report separates the per-saga fixed part (``create`` and the completing
   ``update_saga``) from the step operations (the gate ``update_step``, the
   finishing ``update_step_and_get``, any ``get``). It also reports the marginal
   cost of a step, ``(total(50) - total(5)) / 45`` per saga. Target: the per-step
   figures do not grow with the saga's length (no rewrite of the whole saga per
   step).
2. **Listing.** The store is filled with 1,000 executions, then with 100,000, in the
   same run (about 10% of them FAILED, spread over time), and one page of
   ``list(status="failed", limit=50)`` is timed at each size (median of several
   calls after a warm-up). Target: the 100,000 case at most 2x the 1,000 case.

The first executions of a fill go through the store's own ``create`` and
``update_saga``; the bulk of the large fill is written with store-specific batch
code (SQL ``executemany``, Mongo ``insert_many``, Redis through the store in a few
threads) that writes the same rows and index entries. Everything runs under a key,
table or collection prefix of its own and is removed afterwards; MongoDB is a
SecantusDB server started in a temporary directory unless ``BENCH_MONGO_URL`` names
a server. Results go to ``benchmarks/results.json`` under the key ``"stores"``
(other keys are kept) and to the terminal.

Usage::

    python benchmarks/stores.py                       # everything (~10 minutes)
    python benchmarks/stores.py --quick               # smoke run, seconds
    python benchmarks/stores.py --backends redis,sqlite --large 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from celery_saga import Saga
from celery_saga.backends.base import SagaBackend
from celery_saga.models import SagaExecution, SagaStatus
from celery_saga.testing import make_execution

HERE = Path(__file__).parent
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("BENCH_STORES_REDIS_DB", "5"))
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
MONGO_URL = os.environ.get("BENCH_MONGO_URL", "")
BACKENDS = ("redis", "postgresql", "mysql", "sqlite", "mongodb")
LENGTHS = (5, 50)
#: Operations that belong to the saga as a whole rather than to one of its steps.
SAGA_OPS = frozenset({"create", "update_saga"})
#: Store methods whose cost is attributed to them.
METERED = (
    "create",
    "get",
    "update_saga",
    "update_step",
    "update_step_and_get",
    "find_by_idempotency_key",
)
#: How much the per-step cost of the step operations may differ between 5 and 50 steps.
FLAT_TOLERANCE = 1.15
#: One execution in this many is FAILED in the listing fill.
FAILED_EVERY = 10
#: Steps of each execution written by the listing fill.
FILL_STEPS = 3


# -- the stores under test ------------------------------------------------------------------


@dataclass
class Target:
    """A store under test, with how to fill it in bulk and how to remove what it holds."""

    name: str
    store: SagaBackend
    cleanup: Callable[[], None]
    bulk: Callable[[Sequence[SagaExecution]], None] | None = None
    after_fill: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)


def make_target(name: str, run_id: str, workdir: Path) -> Target:
    """Build the store `name` under names of this run's own."""
    if name == "redis":
        return _redis_target(run_id)
    if name in ("postgresql", "mysql", "sqlite"):
        url = {
            "postgresql": POSTGRES_URL,
            "mysql": MYSQL_URL,
            "sqlite": f"sqlite:///{workdir / 'bench-stores.db'}",
        }[name]
        return _sql_target(name, url, f"bs{run_id}_")
    if name == "mongodb":
        return _mongo_target(run_id, workdir)
    raise SystemExit(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def _redis_target(run_id: str) -> Target:
    import redis

    from celery_saga_redis import RedisSagaBackend

    prefix = f"bench-stores-{run_id}:"
    url = f"{REDIS}/{REDIS_DB}"
    store = RedisSagaBackend(url=url, prefix=prefix)

    def cleanup() -> None:
        client = redis.Redis.from_url(url)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}*", count=2000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()
        store.close()

    # No batch path: the store's create script keeps the indexes, so the fill goes
    # through the store itself, in a few threads to overlap the network.
    return Target("redis", store, cleanup, bulk=None)


def _sql_target(name: str, url: str, prefix: str) -> Target:
    from sqlalchemy import insert, text

    from celery_saga_sql import SQLSagaBackend

    store = SQLSagaBackend(url, table_prefix=prefix)
    tables = store.tables

    def bulk(executions: Sequence[SagaExecution]) -> None:
        # The rows `create` writes, with the changes `update_saga` makes for FAILED.
        rows = [store._execution_row(e) for e in executions]
        steps = [store._step_row(e.saga_id, s) for e in executions for s in e.steps]
        with store.engine.begin() as conn:
            conn.execute(insert(tables.executions), rows)
            conn.execute(insert(tables.steps), steps)

    def after_fill() -> None:
        # What autovacuum/auto-analyze does on a live database: fresh planner statistics.
        if name == "postgresql":
            with store.read_engine.connect() as conn:
                conn.execute(text(f"ANALYZE {tables.executions.name}"))
        elif name == "mysql":
            with store.read_engine.connect() as conn:
                conn.execute(text(f"ANALYZE TABLE {tables.executions.name}")).all()
        elif name == "sqlite":
            with store.read_engine.connect() as conn:
                conn.execute(text("ANALYZE"))

    def cleanup() -> None:
        store.close()
        if name != "sqlite":
            from sqlalchemy import create_engine

            engine = create_engine(store.url.url)
            try:
                tables.metadata.drop_all(engine)
            finally:
                engine.dispose()

    return Target(name, store, cleanup, bulk=bulk, after_fill=after_fill)


def _mongo_target(run_id: str, workdir: Path) -> Target:
    from celery_saga_mongo import MongoSagaBackend
    from celery_saga_mongo.documents import execution_document

    server: Any = None
    base = MONGO_URL
    notes: list[str] = []
    if not base:
        from secantus import SecantusDBServer

        data = workdir / "secantus"
        data.mkdir()
        server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(data))
        server.start()
        base = server.uri
        notes.append("SecantusDB (MongoDB wire protocol) in a temporary directory")
    scheme, _, rest = base.partition("://")
    location, _, query = rest.partition("?")
    hosts = location.split("/", 1)[0]
    options = [p for p in query.split("&") if p] + [f"collection_prefix=bs{run_id}_"]
    url = f"{scheme}://{hosts}/bench_stores?{'&'.join(options)}"
    store = MongoSagaBackend.from_url(url)

    def bulk(executions: Sequence[SagaExecution]) -> None:
        store.executions.insert_many([execution_document(e) for e in executions], ordered=False)

    def cleanup() -> None:
        try:
            store.executions.drop()
        finally:
            store.close()
            if server is not None:
                server.stop()

    return Target("mongodb", store, cleanup, bulk=bulk, notes=notes)


# -- per-step cost --------------------------------------------------------------------------


class Meter:
    """Attributes the store's round trips and bytes written to the operation that made them.

    The store's public methods are wrapped on the instance; a call made inside
    another (the default `update_step_and_get` calls `update_step` and `get`)
    counts for the outer one.
    """

    def __init__(self, store: SagaBackend) -> None:
        self.store = store
        self.ops: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._depth = 0

    @contextmanager
    def metering(self) -> Iterator[Meter]:
        """Wrap the store's methods for the duration of the block."""
        for name in METERED:
            setattr(self.store, name, self._wrap(name, getattr(self.store, name)))
        try:
            yield self
        finally:
            for name in METERED:
                delattr(self.store, name)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        stats = self.store.stats

        def metered(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(*args, **kwargs)
            before = (stats.round_trips, stats.bytes_written)
            self._depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                row = self.ops[name]
                row[0] += 1
                row[1] += stats.round_trips - before[0]
                row[2] += stats.bytes_written - before[1]

        return metered

    def reset(self) -> None:
        """Forget what was counted."""
        self.ops.clear()
        self.store.stats.reset()


def build_app(store: SagaBackend, longest: int) -> tuple[Celery, dict[int, Saga]]:
    """An eager Celery app on `store` with a saga of each length in `LENGTHS`."""
    app = Celery(f"bench-stores-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(
        task_always_eager=True,
        task_eager_propagates=True,
        saga_backend=store,
        broker_url="memory://",
    )

    def noop(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}

    def noop_task(n: int) -> Any:
        return app.task(name=f"bench.stores.noop{n}", shared=False)(noop)

    tasks = [noop_task(n) for n in range(longest)]
    sagas = {}
    for length in LENGTHS:
        saga = Saga(f"bench.stores.s{length}", app=app)
        for task in tasks[:length]:
            saga.add_step(task, no_compensation=True)  # nothing to undo, on purpose
        sagas[length] = saga
    return app, sagas


def measure_steps(target: Target, sagas_per_length: int) -> dict[str, Any]:
    """Run sagas of each length and report the store's cost per step and per saga."""
    store = target.store
    _, sagas = build_app(store, max(LENGTHS))
    meter = Meter(store)
    report: dict[str, Any] = {"sagas_per_length": sagas_per_length}
    with meter.metering():
        for length, saga in sagas.items():
            for _ in range(2):  # warm up: connections, tables, scripts
                _run_one(store, saga)
            meter.reset()
            for _ in range(sagas_per_length):
                _run_one(store, saga)
            report[str(length)] = _summarize(meter.ops, length, sagas_per_length)
    short, long_ = report[str(LENGTHS[0])], report[str(LENGTHS[1])]
    extra = LENGTHS[1] - LENGTHS[0]
    marginal_rt = (long_["per_saga"]["round_trips"] - short["per_saga"]["round_trips"]) / extra
    marginal_b = (long_["per_saga"]["bytes_written"] - short["per_saga"]["bytes_written"]) / extra
    report["marginal_per_step"] = {"round_trips": marginal_rt, "bytes_written": marginal_b}
    report["fixed_per_saga"] = {
        "round_trips": short["per_saga"]["round_trips"] - LENGTHS[0] * marginal_rt,
        "bytes_written": short["per_saga"]["bytes_written"] - LENGTHS[0] * marginal_b,
    }
    # A step must not cost more in a longer saga. The step operations of the first
    # stage may differ from the rest (the runtime can start it with the saga), so
    # "flat" allows the 1/length effect that has on the average, and no more.
    s_ops, l_ops = short["step_ops_per_step"], long_["step_ops_per_step"]
    report["per_step_flat"] = all(
        l_ops[k] <= s_ops[k] * FLAT_TOLERANCE + 0.01 for k in ("round_trips", "bytes_written")
    )
    return report


def _run_one(store: SagaBackend, saga: Saga) -> None:
    result = saga.run(n=1)
    # Check the outcome with a read of the benchmark's own, kept off the books.
    stats = store.stats
    counted = stats.round_trips, stats.bytes_written
    execution = type(store).get(store, result.saga_id)
    stats.round_trips, stats.bytes_written = counted
    if execution is None or execution.status is not SagaStatus.COMPLETED:
        status = None if execution is None else execution.status.value
        raise SystemExit(f"benchmark saga {result.saga_id} ended {status}, not completed")


def _summarize(ops: dict[str, list[int]], length: int, sagas: int) -> dict[str, Any]:
    steps = length * sagas
    total_rt = sum(row[1] for row in ops.values())
    total_b = sum(row[2] for row in ops.values())
    step_rt = sum(row[1] for name, row in ops.items() if name not in SAGA_OPS)
    step_b = sum(row[2] for name, row in ops.items() if name not in SAGA_OPS)
    return {
        "steps": steps,
        "per_step": {"round_trips": total_rt / steps, "bytes_written": total_b / steps},
        "per_saga": {"round_trips": total_rt / sagas, "bytes_written": total_b / sagas},
        "step_ops_per_step": {"round_trips": step_rt / steps, "bytes_written": step_b / steps},
        "saga_ops_per_saga": {
            "round_trips": (total_rt - step_rt) / sagas,
            "bytes_written": (total_b - step_b) / sagas,
        },
        "by_operation": {
            name: {
                "calls_per_step": row[0] / steps,
                "round_trips_per_step": row[1] / steps,
                "bytes_written_per_step": row[2] / steps,
            }
            for name, row in sorted(ops.items())
        },
    }


# -- listing --------------------------------------------------------------------------------


def executions(start: int, count: int, base: float) -> list[SagaExecution]:
    """Executions `start`..`start+count-1`, one second apart, every tenth FAILED."""
    made = []
    for i in range(start, start + count):
        execution = make_execution(steps=FILL_STEPS, name="bench.stores.fill", created_at=base + i)
        if i % FAILED_EVERY == FAILED_EVERY // 2:
            # What `update_saga` sets when a saga fails (used by the batch paths).
            execution.status = SagaStatus.FAILED
            execution.error = "step 1 failed: benchmark"
            execution.failed_step = 1
            execution.finished_at = base + i + 0.5
            execution.updated_at = base + i + 0.5
        made.append(execution)
    return made


def fill(target: Target, start: int, count: int, base: float, *, through_store: int) -> None:
    """Store executions `start`..; the first `through_store` of them via `create`/`update_saga`."""
    batch = executions(start, count, base)
    direct = batch[:through_store] if target.bulk is not None else batch
    rest = batch[len(direct) :]
    store = target.store

    def one(execution: SagaExecution) -> None:
        failed = execution.status is SagaStatus.FAILED
        if failed:
            execution.status = SagaStatus.RUNNING
        store.create(execution)
        if failed:
            store.update_saga(
                execution.saga_id,
                {
                    "status": SagaStatus.FAILED,
                    "error": execution.error,
                    "failed_step": execution.failed_step,
                    "finished_at": execution.finished_at,
                },
                expect_status={SagaStatus.RUNNING},
            )

    if target.bulk is None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for chunk in _chunks(direct, 2000):
                list(pool.map(one, chunk))
    else:
        for execution in direct:
            one(execution)
        for chunk in _chunks(rest, 5000):
            target.bulk(chunk)
    if target.after_fill is not None:
        target.after_fill()


def _chunks(items: Sequence[SagaExecution], size: int) -> Iterator[Sequence[SagaExecution]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def time_listing(store: SagaBackend, calls: int, expected: int) -> dict[str, Any]:
    """Median seconds of one ``list(status="failed", limit=50)`` page."""
    for _ in range(3):
        page = store.list(status="failed", limit=50)
    if len(page.items) != expected or any(s.status is not SagaStatus.FAILED for s in page.items):
        raise SystemExit(f"listing returned {len(page.items)} items, expected {expected} FAILED")
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        store.list(status="failed", limit=50)
        times.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000}


def measure_listing(target: Target, small: int, large: int, calls: int) -> dict[str, Any]:
    """Fill to `small` executions, time a page, fill to `large`, time it again."""
    base = time.time() - large - 10
    started = time.perf_counter()
    fill(target, 0, small, base, through_store=small)
    fill_small = time.perf_counter() - started
    at_small = time_listing(target.store, calls, min(50, small // FAILED_EVERY))
    started = time.perf_counter()
    fill(target, small, large - small, base, through_store=min(1000, large - small))
    fill_large = time.perf_counter() - started
    at_large = time_listing(target.store, calls, 50)
    return {
        "small": small,
        "large": large,
        "small_ms": at_small["median_ms"],
        "large_ms": at_large["median_ms"],
        "small_min_ms": at_small["min_ms"],
        "large_min_ms": at_large["min_ms"],
        "ratio": at_large["median_ms"] / at_small["median_ms"],
        "calls": calls,
        "fill_seconds": {"small": fill_small, "large": fill_large},
    }


# -- report ---------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    """The per-step and listing tables."""
    rows = results["backends"]
    print()
    print(
        f"Per step ({results['settings']['sagas_per_length']} sagas of each length, "
        "in-process eager): round trips / bytes written"
    )
    head = (
        f"{'backend':<11} {'RT/step 5':>9} {'RT/step 50':>10} {'B/step 5':>9} {'B/step 50':>9}"
        f" | {'step-ops RT 5/50':>16} {'step-ops B 5/50':>15} | {'marginal RT,B':>14}"
        f" {'fixed RT,B/saga':>16}"
    )
    print(head)
    print("-" * len(head))
    for name, row in rows.items():
        steps = row.get("steps")
        if not steps:
            continue
        s, l_ = steps["5"], steps["50"]
        so, lo = s["step_ops_per_step"], l_["step_ops_per_step"]
        m, f = steps["marginal_per_step"], steps["fixed_per_saga"]
        total_s, total_l = s["per_step"], l_["per_step"]
        print(
            f"{name:<11} {total_s['round_trips']:>9.2f} {total_l['round_trips']:>10.2f}"
            f" {total_s['bytes_written']:>9.0f} {total_l['bytes_written']:>9.0f}"
            f" | {so['round_trips']:>7.2f}/{lo['round_trips']:<8.2f}"
            f" {so['bytes_written']:>7.0f}/{lo['bytes_written']:<7.0f}"
            f" | {m['round_trips']:>5.2f},{m['bytes_written']:>7.0f}"
            f"  {f['round_trips']:>5.1f},{f['bytes_written']:>8.0f}"
            f"  {'ok' if steps['per_step_flat'] else 'GROWS'}"
        )
    print(
        "RT/step, B/step: everything the store did, divided by the steps run; step-ops: the\n"
        "gate, finish and reads of the steps only (target: no growth from 5 to 50); marginal:\n"
        "(per-saga total at 50 - at 5) / 45; fixed: the rest of a saga's cost (create, complete)."
    )
    print()
    listing = [(n, r["listing"]) for n, r in rows.items() if r.get("listing")]
    if listing:
        first = listing[0][1]
        print(
            f"list(status='failed', limit=50), median of {first['calls']} calls "
            f"(target: {first['large']:,} at most 2x {first['small']:,})"
        )
        head = f"{'backend':<11} {'at ' + format(first['small'], ','):>12} "
        head += f"{'at ' + format(first['large'], ','):>12} {'ratio':>7}  fill s (small, large)"
        print(head)
        print("-" * len(head))
        for name, r in listing:
            ok = "ok" if r["ratio"] <= 2 else "MISSED"
            print(
                f"{name:<11} {r['small_ms']:>9.3f} ms {r['large_ms']:>9.3f} ms {r['ratio']:>7.2f}"
                f"  {r['fill_seconds']['small']:.1f}, {r['fill_seconds']['large']:.1f}  {ok}"
            )
    print()


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Store `results` under "stores" in the JSON file, keeping its other keys."""
    try:
        existing = json.loads(path.read_text())
        if not isinstance(existing, dict):
            existing = {}
    except (FileNotFoundError, json.JSONDecodeError):
        existing = {}
    existing["stores"] = results
    path.write_text(json.dumps(existing, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--sagas", type=int, default=20, help="sagas of each length")
    parser.add_argument("--small", type=int, default=1_000, help="executions, first listing")
    parser.add_argument("--large", type=int, default=100_000, help="executions, second listing")
    parser.add_argument("--calls", type=int, default=20, help="timed listing calls per size")
    parser.add_argument("--skip-steps", action="store_true", help="listing only")
    parser.add_argument("--skip-listing", action="store_true", help="per-step costs only")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="'' not to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.sagas, args.small, args.large, args.calls = 3, 1_000, 5_000, 5
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    for name in names:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if args.large <= args.small:
        parser.error("--large must be above --small")

    run_id = uuid.uuid4().hex[:8]
    began = time.perf_counter()
    results: dict[str, Any] = {
        "description": "state-store cost per step (5- and 50-step sagas, eager, in-process) "
        "and listing time at two sizes",
        "settings": {
            "sagas_per_length": args.sagas,
            "small": args.small,
            "large": args.large,
            "calls": args.calls,
            "quick": args.quick,
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "backends": {},
    }
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-stores-{name}-"))
        row: dict[str, Any] = {}
        results["backends"][name] = row
        t0 = time.perf_counter()
        target = make_target(name, run_id, workdir)
        try:
            row["store"] = repr(target.store)
            if target.notes:
                row["notes"] = target.notes
            if not args.skip_steps:
                print(f"{name}: per-step cost...", flush=True)
                row["steps"] = measure_steps(target, args.sagas)
            if not args.skip_listing:
                print(f"{name}: listing at {args.small:,} and {args.large:,}...", flush=True)
                row["listing"] = measure_listing(target, args.small, args.large, args.calls)
        finally:
            target.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
        row["seconds"] = time.perf_counter() - t0
        print(f"{name}: done in {row['seconds']:.1f} s", flush=True)
    results["seconds"] = time.perf_counter() - began
    print_table(results)
    print(f"total {results['seconds']:.1f} s")
    if args.out:
        write_results(Path(args.out), results)
        print(f"results written to {args.out} (key 'stores')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
