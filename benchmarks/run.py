"""The benchmark harness (``nox -s bench``): sagas against plain Celery chains, 0.1.1, DBOS.

Workloads (Redis broker, one prefork worker with 2 processes per contender, unless
said otherwise):

- W1: N sagas of 5 no-op steps: this project (Redis state store), the same tasks as
  a plain Celery chain with a Redis result backend, and celery-saga 0.1.1 with its
  Redis backend. Each repetition starts a contender's N sagas in ``--w1-blocks``
  blocks (4), the contenders taking turns block by block; its time is their sum.
- W2: N sagas of one step then a parallel group of 4, the same three contenders,
  plus for each the number of sagas whose record lacks an output of a step that ran.
- W3: one saga at a time, N in a row, the caller blocking on ``get()``: p50 and p99.
- W4: W1 on each of this project's state stores (memory excluded: it cannot be
  shared across processes), each against the plain chain and the Redis store, and
  sagas of 50 and 200 no-op steps on each store (``--w4-lengths``): time per saga
  and the workers' CPU per step at each length (the target: flat from 5 to 200).
- W5: W1 with the RabbitMQ broker: this project against the plain chain.
- W6: DBOS, which runs durable steps in-process on PostgreSQL, against this project
  on the PostgreSQL and on the Redis store: N workflows (sagas) of 5 no-op steps
  started at once, and one at a time (p50, p95, p99). DBOS runs in its own venv,
  given by ``--dbos-python`` (``nox -s bench`` makes it), on its own database
  (``--dbos-url``, default ``bench_dbos`` on the local PostgreSQL).
- W7: the cost of a child saga: N sagas of 3 steps whose middle step is a child saga of
  3 (the same five no-op task bodies, the middle three run by a child execution),
  against W1's flat saga of 5 no-op steps, on the same worker (Redis store, Redis
  broker); the figure is the ratio nested / flat.
- W8: bytes kept per finished 5-step saga by each store (`footprint`), beside the
  plain chain's Redis result backend and DBOS's system tables.
- W9: the web view (``celery -A bench_app saga web``: uvicorn serving
  ``celery_saga_web.create_app``) over the Redis and the PostgreSQL store (those of
  ``--stores``), each holding N stored executions (``--w9-executions``, default
  100,000) plus one real 50-step and one real compensated execution run by a worker:
  the list page, the list filtered by status and by name, the second page (by the
  store's cursor) and the 50-step execution's page, each requested ``--w9-requests``
  times per repetition over HTTP (httpx, keep-alive); median, p95 and the server's
  CPU per request, target: median under 200 ms. The stored executions are kept
  between runs (Redis key prefix ``bench-web-<N>:`` in the store's database,
  PostgreSQL tables ``bench_web_<N>_*``) and made again only when their count is not
  N (or with ``--w9-reseed``); `web_seed` says how.
- W10: the cost of tracing: W1's sagas on the Redis store with celery-saga's
  OpenTelemetry instrumentation on (its worker started with
  ``CELERY_SAGA_BENCH_OTEL=1``, the harness's producer instrumented during its runs,
  spans to an exporter that drops them) against the same with it off, and the plain
  chain as the baseline, in the same run.
- W11: the Redis server's time per saga step, this version's Redis store against
  celery-saga-redis 0.4.0 (commit 040c323, in a venv given by ``--baseline-python``;
  ``nox -s bench`` makes it): each version's store alone on a private ``redis-server``
  (a free port), N sagas of 5 no-op steps through that version's worker and caller;
  the scripts' server time, calls and time per call per step, the store's time per
  step and the server's CPU per step (``INFO commandstats``, ``INFO cpu``); target:
  this version's script time per step at most half of 0.4.0's. See `server_time`.

Every comparison runs in this one invocation, alternating the contenders (the order
rotates each repetition), for 5 repetitions unless ``--reps`` says otherwise; the
tables report medians, spread (min-max) and ratios against the issues' targets, and
each workload's section of results.json records its own run: date, repetitions,
load average before and after, the machine's CPU and cores, and the command.
Workers are started once for the whole run, each contender on its own queue, and
warmed up first. A separate counting pass (not timed; by default only in runs with
W1) reports broker messages and state-store round trips per step. celery-saga 0.1.1
uses the same import name as this project, so it runs in its own venv, given by
``--orig-python`` (``nox -s bench`` makes it).

Results go to the terminal and to ``benchmarks/results.json`` (machine, versions,
every repetition's raw numbers); a run replaces the sections of the workloads it ran
and keeps the others, so ``--workloads W6`` updates W6 only. ``benchmarks/report.py``
turns that file into ``docs/performance.md``.

Redis databases: ``BENCH_REDIS_DBS`` (five comma-separated numbers, default
``3,4,5,6,7``) gives the broker's, the plain chain's results', this project's store's
(and the harness's own keys), 0.1.1's results' and 0.1.1's records'. The harness only
deletes keys it made, under names of this run's own, and W9's kept executions when
it makes them again.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from celery.signals import after_task_publish  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
AMQP = os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES = os.environ.get("BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
#: BENCH_MONGO_URL names a MongoDB server for W4; without it a SecantusDB server is started.
#: DBOS's system database (W6, W8): its own database on the local PostgreSQL.
DBOS_URL = os.environ.get("BENCH_DBOS_URL", "postgresql://postgres@127.0.0.1:5432/bench_dbos")
#: Redis databases: broker, plain chain results, this project's store (and the
#: harness's own keys), 0.1.1's result backend, 0.1.1's records.
BROKER_DB, RESULTS_DB, STORE_DB, ORIG_RESULTS_DB, ORIG_STORE_DB = (
    int(n) for n in os.environ.get("BENCH_REDIS_DBS", "3,4,5,6,7").split(",")
)

#: Sizes from the issues, and the small ones of ``--quick``. W4's count is of its
#: 5-step sagas; a longer length L runs w4 * 5 / L sagas (at least 2): the same steps.
SIZES = {
    "w1": 400,
    "w2": 200,
    "w3": 200,
    "w4": 400,
    "w5": 400,
    "w6": 400,
    "w6_latency": 200,
    "w7": 200,
    "w8": 400,
    "w9": 100_000,
    "w9_requests": 50,
    "w10": 400,
    "w11": 400,
    "count": 100,
    "reps": 5,
}
QUICK = {
    "w1": 40,
    "w2": 20,
    "w3": 20,
    "w4": 40,
    "w5": 40,
    "w6": 40,
    "w6_latency": 20,
    "w7": 20,
    "w8": 40,
    "w9": 5_000,
    "w9_requests": 10,
    "w10": 40,
    "w11": 40,
    "count": 20,
    "reps": 3,
}
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11")
#: The workloads with a ``--<w>-sagas`` size.
SIZED = ("w1", "w2", "w3", "w4", "w5", "w6", "w6_latency", "w7", "w8", "w10", "w11")
#: W9's stores (of ``--stores``).
WEB_STORES = ("redis", "postgresql")
STORES = ("redis", "postgresql", "mysql", "sqlite", "mongodb")
#: W4's saga lengths (steps).
LENGTHS = (5, 50, 200)
#: Keys of results.json every run writes; a workload's section (and "counts") is
#: replaced only by a run that made it (other sections, e.g. "stores", are kept).
OWN_KEYS = ("version", "machine", "config", "started", "duration_seconds")

WARM_UP = 20
#: W1's blocks per repetition: a contender's sagas are started a block at a time (100 at
#: the default size), the contenders taking turns, so a change in the machine's load
#: within a repetition meets them alike.
W1_BLOCKS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; sizes default to the issue's values (``--quick``: small ones)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    for key, what in (
        ("w1", "W1 sagas"),
        ("w2", "W2 sagas"),
        ("w3", "W3 sagas in a row"),
        ("w4", "W4 5-step sagas per store"),
        ("w5", "W5 sagas"),
        ("w6", "W6 sagas (workflows) started at once"),
        ("w7", "W7 sagas, nested and flat each"),
        ("w8", "W8 finished sagas kept per measurement"),
        ("w10", "W10 sagas"),
        ("w11", "W11 sagas per version and repetition"),
    ):
        parser.add_argument(f"--{key}-sagas", type=int, help=f"{what} (default {SIZES[key]})")
    parser.add_argument(
        "--w6-latency",
        type=int,
        dest="w6_latency_sagas",
        help=f"W6 sagas one at a time (default {SIZES['w6_latency']})",
    )
    parser.add_argument(
        "--w9-executions",
        type=int,
        help=f"W9's stored executions per store (default {SIZES['w9']:,}; --quick {QUICK['w9']:,})",
    )
    parser.add_argument(
        "--w9-requests",
        type=int,
        help=f"W9's requests of each page per repetition (default {SIZES['w9_requests']})",
    )
    parser.add_argument(
        "--w9-reseed",
        action="store_true",
        help="delete W9's kept executions and make them again",
    )
    parser.add_argument(
        "--w1-blocks",
        type=int,
        default=W1_BLOCKS,
        help="blocks each W1 repetition splits a contender's sagas into, the contenders "
        f"taking turns block by block (default {W1_BLOCKS}; 1: one block)",
    )
    parser.add_argument(
        "--w4-lengths",
        default=",".join(str(n) for n in LENGTHS),
        help="W4's saga lengths in steps, 5 first (default 5,50,200)",
    )
    parser.add_argument(
        "--count-sagas",
        type=int,
        help="sagas of the counting pass (0: skip; default 100 when W1 runs, else 0)",
    )
    parser.add_argument(
        "--reps", type=int, help=f"repetitions of each workload (default {SIZES['reps']})"
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated, e.g. W1,W3"
    )
    parser.add_argument("--stores", default=",".join(STORES), help="W4's and W8's state stores")
    parser.add_argument(
        "--orig-python",
        help="interpreter of a venv with celery-saga==0.1.1 (without it, 0.1.1 is skipped)",
    )
    parser.add_argument(
        "--dbos-python",
        help="interpreter of a venv with dbos (without it, DBOS is left out of W6 and W8)",
    )
    parser.add_argument(
        "--baseline-python",
        help="interpreter of a venv with celery-saga-core and celery-saga-redis 0.4.0 "
        "(commit 040c323; without it, W11 measures this version alone)",
    )
    parser.add_argument(
        "--dbos-url", default=DBOS_URL, help="DBOS's system database (created if absent)"
    )
    parser.add_argument(
        "--orig-get-interval",
        type=float,
        default=0.005,
        help="interval of 0.1.1's polling SagaResult.get() in W3 (its default is 0.5 s)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per timed run")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else SIZES
    for key in SIZED:
        if getattr(args, f"{key}_sagas") is None:
            setattr(args, f"{key}_sagas", sizes[key])
    if args.w9_executions is None:
        args.w9_executions = sizes["w9"]
    if args.w9_requests is None:
        args.w9_requests = sizes["w9_requests"]
    if args.w9_executions < 1000 or args.w9_requests < 1:
        parser.error(
            "--w9-executions must be at least 1000 (each filtered list page shows 50 rows) "
            "and --w9-requests at least 1"
        )
    if args.w1_blocks < 1 or args.w1_sagas % args.w1_blocks:
        parser.error(f"--w1-blocks must divide the W1 sagas ({args.w1_sagas}) evenly")
    if args.reps is None:
        args.reps = sizes["reps"]
    if args.reps < 1:
        parser.error("--reps must be at least 1 (the figures need 5 or more)")
    try:
        args.w4_lengths = [int(n) for n in args.w4_lengths.split(",") if n.strip()]
    except ValueError:
        parser.error("--w4-lengths takes comma-separated numbers of steps, e.g. 5,50,200")
    if not args.w4_lengths or args.w4_lengths[0] != 5 or min(args.w4_lengths) < 5:
        parser.error("--w4-lengths must start with 5 (the others are compared with it)")
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    args.stores = [s.strip().lower() for s in args.stores.split(",") if s.strip()]
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if args.count_sagas is None:
        args.count_sagas = sizes["count"] if "W1" in args.workloads else 0
    for name in args.stores:
        if name not in STORES:
            parser.error(f"unknown store {name!r}; choose from {', '.join(STORES)}")
    return args


# -- the counting pass (not timed) ----------------------------------------------------------


def _wait_completed(store: redis.Redis, prefix: str, before: int, n: int) -> None:
    """Wait for n more COMPLETED sagas in the Redis store's status index."""
    from processes import wait

    done_key = f"{prefix}idx:status:completed"
    wait(lambda: store.zcard(done_key) >= before + n, 600, "the sagas")
    failed = store.zcard(f"{prefix}idx:status:compensated") + store.zcard(
        f"{prefix}idx:status:failed"
    )
    if failed:
        raise SystemExit(f"{failed} benchmark sagas did not complete")


def count_pass(run_id: str, n: int) -> dict[str, float]:
    """Run n sagas with counting workers and return per-step message and round-trip counts."""
    from bench_app import build
    from processes import Worker

    from celery_saga.config import backend_for

    key = f"bench:stats:{run_id}"
    prefix = f"bench-count-{run_id}:"
    queue = f"bench-count-{run_id}"
    store_url = f"{REDIS}/{STORE_DB}?prefix={prefix}"
    env = {
        "BENCH_BROKER": f"{REDIS}/{BROKER_DB}",
        "BENCH_STORE": store_url,
        "BENCH_COUNT": "1",
        "BENCH_STATS_URL": f"{REDIS}/{STORE_DB}",
        "BENCH_STATS_KEY": key,
    }
    bench = build("saga", queue, store_url, env["BENCH_BROKER"])
    app, saga = bench.app, bench.five
    published = {"n": 0}

    def on_publish(**_: Any) -> None:
        published["n"] += 1

    after_task_publish.connect(on_publish, weak=False)
    worker = Worker("saga", queue, env).ready()
    store = redis.Redis.from_url(f"{REDIS}/{STORE_DB}")
    stats_client = redis.Redis.from_url(f"{REDIS}/{STORE_DB}", decode_responses=True)
    try:
        caller_store = backend_for(app)
        caller_store.stats.reset()
        before = store.zcard(f"{prefix}idx:status:completed")
        for i in range(n):
            saga.run(i=i)
        _wait_completed(store, prefix, before, n)
        workers = {k: int(v) for k, v in stats_client.hgetall(key).items()}
    finally:
        worker.stop()
        after_task_publish.disconnect(on_publish)
        stats_client.delete(key)
        drop_redis_prefix(STORE_DB, prefix)
        drop_queues(run_id, [])
    steps = n * 5
    caller = caller_store.stats.snapshot()
    return {
        "sagas": n,
        "steps": steps,
        "broker_messages_per_step": (workers.get("published", 0) + published["n"]) / steps,
        "store_round_trips_per_step": (workers.get("round_trips", 0) + caller["round_trips"])
        / steps,
        "store_round_trips_per_step_in_workers": workers.get("round_trips", 0) / steps,
        "store_round_trips_per_saga_in_caller": caller["round_trips"] / n,
        "store_bytes_written_per_step": (workers.get("bytes_written", 0) + caller["bytes_written"])
        / steps,
        "tasks_executed_per_step": workers.get("executed", 0) / steps,
    }


# -- cleaning up ---------------------------------------------------------------------------


def drop_redis_prefix(db: int, *patterns: str) -> None:
    """Delete every key of Redis database `db` starting with one of `patterns`."""
    client = redis.Redis.from_url(f"{REDIS}/{db}")
    for pattern in patterns:
        keys = list(client.scan_iter(match=f"{pattern}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])


def drop_store(kind: str, url: str) -> None:
    """Remove what a W4 store created: Redis keys, SQL tables, the Mongo collection."""
    if kind == "redis":
        drop_redis_prefix(STORE_DB, url.split("prefix=", 1)[1])
    elif kind in ("postgresql", "mysql"):
        from sqlalchemy import create_engine

        from celery_saga_sql.schema import build_tables
        from celery_saga_sql.urls import parse_store_url

        parsed = parse_store_url(url)
        engine = create_engine(parsed.url)
        try:
            build_tables(parsed.table_prefix or "saga_").metadata.drop_all(engine)
        finally:
            engine.dispose()
    elif kind == "mongodb":
        from pymongo import MongoClient

        base, _, query = url.partition("?")
        client: Any = MongoClient(base.rsplit("/", 1)[0] + "/")
        try:
            prefix = query.split("collection_prefix=", 1)[1]
            client[base.rsplit("/", 1)[1]].drop_collection(f"{prefix}executions")
        finally:
            client.close()
    # sqlite: the file lives in the run's temporary directory, removed at the end.


def drop_queues(run_id: str, amqp_queues: list[str]) -> None:
    """Forget this run's queues: kombu's Redis bindings, and the RabbitMQ queues."""
    drop_redis_prefix(BROKER_DB, f"_kombu.binding.bench-*-{run_id}", f"bench-*-{run_id}")
    drop_redis_prefix(BROKER_DB, f"_kombu.binding_permanent.bench-*-{run_id}")
    if amqp_queues:
        from kombu import Connection

        with Connection(AMQP) as conn:
            channel = conn.default_channel
            for queue in amqp_queues:
                channel.queue_delete(queue)


# -- machine and versions -----------------------------------------------------------------


def _first(path: str, field: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _quietly(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _sql_version(url: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("select version()")).scalar())
    finally:
        engine.dispose()


def _rabbitmq_version() -> str:
    from kombu import Connection

    with Connection(AMQP) as conn:
        conn.connect()
        props = conn.connection.server_properties
        return str(props.get("version", "unknown"))


def cpu_model() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    return _first("/proc/cpuinfo", "model name") or platform.processor()


def machine(orig_python: str | None, dbos: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine, the services and every package version of this run."""
    import celery
    import kombu

    mem_kb = (_first("/proc/meminfo", "MemTotal") or "0 kB").split()[0]
    mem = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() and int(mem_kb) else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": importlib.metadata.version("redis"),
        "packages": {
            name: _quietly(lambda name=name: importlib.metadata.version(name))
            for name in (
                "celery-saga-core",
                "celery-saga-redis",
                "celery-saga-sql",
                "celery-saga-mongo",
                "celery-saga-web",
                "celery-saga-opentelemetry",
                "opentelemetry-sdk",
                "starlette",
                "uvicorn",
                "httpx",
                "SQLAlchemy",
                "psycopg",
                "PyMySQL",
                "pymongo",
                "SecantusDB",
            )
        },
        "services": {
            "redis": _quietly(
                lambda: redis.Redis.from_url(REDIS).info("server").get("redis_version")
            ),
            "rabbitmq": _quietly(_rabbitmq_version),
            "postgresql": _quietly(lambda: " ".join(_sql_version(POSTGRES).split()[1:2])),
            "mariadb": _quietly(lambda: _sql_version(MYSQL)),
            "mongodb": _quietly(_mongo_server),
        },
        "git": _quietly(_git),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    if orig_python:
        info["orig_venv"] = _quietly(lambda: _orig_versions(orig_python))
    if dbos:
        info["dbos_venv"] = dbos
    return info


def _mongo_server() -> str:
    url = os.environ.get("BENCH_MONGO_URL")
    if not url:
        return f"SecantusDB {importlib.metadata.version('SecantusDB')} (started by the harness)"
    from pymongo import MongoClient

    client: Any = MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        return f"MongoDB {client.server_info().get('version')}"
    finally:
        client.close()


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True
        ).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "-s"))}


def _orig_versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform; print(json.dumps({**{p: m.version(p) "
        "for p in ('celery-saga', 'celery', 'kombu', 'redis')}, "
        "'python': platform.python_version()}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


# -- the run ----------------------------------------------------------------------------------


class Bench:
    """Everything one run starts, keyed so workloads can pick their contenders."""

    def __init__(
        self,
        args: argparse.Namespace,
        run_id: str,
        stack: contextlib.ExitStack,
        cleanup: contextlib.ExitStack,
    ) -> None:
        """`stack` stops the processes; `cleanup`, unwound after it, removes the data."""
        self.args, self.run_id, self.stack, self.cleanup = args, run_id, stack, cleanup
        self.tmp = tempfile.mkdtemp(prefix="celery-saga-bench-")
        cleanup.callback(shutil.rmtree, self.tmp, True)
        self.marks = redis.Redis.from_url(f"{REDIS}/{STORE_DB}")
        self.base_env = {
            "BENCH_STATS_URL": f"{REDIS}/{STORE_DB}",
            "BENCH_MARKS_URL": f"{REDIS}/{STORE_DB}",
            "BENCH_RESULTS": f"{REDIS}/{RESULTS_DB}",
        }
        os.environ.update(self.base_env)
        self.workers: list[Any] = []
        self.contenders: dict[str, Any] = {}
        #: The store URL of each of this project's contenders (W8 measures them).
        self.urls: dict[str, str] = {}
        #: The DBOS venv's versions, once its driver started.
        self.dbos_versions: dict[str, Any] | None = None
        self.amqp_queues: list[str] = []
        cleanup.callback(drop_queues, run_id, self.amqp_queues)

    def needs(self, *workloads: str) -> bool:
        """True if any of `workloads` is selected."""
        return any(w in self.args.workloads for w in workloads)

    def store_url(self, kind: str) -> str:
        """The URL of this run's `kind` store (fresh names, removed at the end)."""
        tag = self.run_id
        if kind == "redis":
            return f"{REDIS}/{STORE_DB}?prefix=bench-{tag}:"
        if kind == "postgresql":
            return f"{POSTGRES}?table_prefix=b{tag}_"
        if kind == "mysql":
            return f"{MYSQL}?table_prefix=b{tag}_"
        if kind == "sqlite":
            return f"sqlite:///{self.tmp}/bench-{tag}.db"
        base = os.environ.get("BENCH_MONGO_URL")  # a real mongod, e.g. mongodb://host:27017
        if not base:
            from processes import SecantusServer

            server = SecantusServer(os.path.join(self.tmp, "secantus"))
            self.cleanup.callback(server.stop)
            base = server.uri
        scheme, _, rest = base.partition("://")
        hosts = rest.split("/", 1)[0].split("?", 1)[0]
        return f"{scheme}://{hosts}/celery_saga_bench?collection_prefix=b{tag}_"

    def _queue(self, key: str, broker: str) -> str:
        queue = f"bench-{key}-{self.run_id}"
        if broker.startswith("amqp"):
            self.amqp_queues.append(queue)
        return queue

    def our_saga(
        self,
        key: str,
        label: str,
        store: str,
        broker: str,
        kind: str,
        *,
        traced: bool = False,
    ) -> None:
        """Start a worker for this project on `store` and register its contender.

        With `traced` (W10), the worker runs with the saga instrumentation on
        (``CELERY_SAGA_BENCH_OTEL=1``) and the contender turns it on here for its runs.
        """
        from bench_app import build
        from contenders import OurSaga, TracedSaga
        from processes import Worker

        queue = self._queue(key, broker)
        env = {**self.base_env, "BENCH_BROKER": broker, "BENCH_STORE": store}
        if traced:
            env["CELERY_SAGA_BENCH_OTEL"] = "1"
        worker = self.stack.enter_context(_stopping(Worker("saga", queue, env)))
        self.workers.append(worker)
        cls = TracedSaga if traced else OurSaga
        contender = cls(key, label, build("saga", queue, store, broker), worker, self.marks)
        self.contenders[key] = contender
        self.urls[key] = store
        self.cleanup.callback(drop_store, kind, store)
        self.cleanup.callback(contender.backend.close)  # unwound first: before the drop

    def chain(self, key: str, label: str, broker: str) -> None:
        """Start a worker for plain chains and register its contender."""
        from bench_app import build
        from contenders import PlainChain
        from processes import Worker

        queue = self._queue(key, broker)
        env = {**self.base_env, "BENCH_BROKER": broker}
        worker = self.stack.enter_context(_stopping(Worker("chain", queue, env)))
        self.workers.append(worker)
        self.contenders[key] = PlainChain(
            key, label, build("chain", queue, broker=broker), worker, self.marks
        )

    def nested(self) -> None:
        """Register W7's nested saga: the "saga" contender's app and worker, another saga.

        Registered here (not in `run_workloads`) so that the warm-up runs it too.
        """
        from contenders import NestedSaga

        source = self.contenders["saga"]
        self.contenders["nested"] = NestedSaga(
            "nested",
            "celery-saga, nested (Redis store)",
            source.bench,
            source.worker,
            self.marks,
        )

    def original(self, python: str) -> None:
        """Start celery-saga 0.1.1's worker and driver (its venv) and register it."""
        from contenders import Original
        from processes import OrigDriver, Worker

        queue = f"bench-orig-{self.run_id}"
        env = {
            **self.base_env,
            "BENCH_BROKER": f"{REDIS}/{BROKER_DB}",
            "BENCH_QUEUE": queue,
            "BENCH_ORIG_RESULTS": f"{REDIS}/{ORIG_RESULTS_DB}",
            "BENCH_ORIG_STORE": f"{REDIS}/{ORIG_STORE_DB}",
        }
        worker = Worker("orig", queue, env, python=python, app="orig_app")
        self.workers.append(self.stack.enter_context(_stopping(worker)))
        driver = OrigDriver(python, env)
        self.stack.callback(driver.stop)
        self.cleanup.callback(
            drop_redis_prefix, ORIG_RESULTS_DB, "celery-task-meta-", "celery-taskset-meta-"
        )
        self.cleanup.callback(drop_redis_prefix, ORIG_STORE_DB, "celery_saga:")
        self.contenders["orig"] = Original(
            "orig",
            "celery-saga 0.1.1 (its Redis backend)",
            worker,
            driver,
            redis.Redis.from_url(f"{REDIS}/{ORIG_STORE_DB}"),
            self.marks,
            self.args.orig_get_interval,
        )

    def dbos(self, python: str) -> None:
        """Start DBOS's driver (its venv) on its own database and register it."""
        from contenders import Dbos
        from processes import DbosDriver

        driver = DbosDriver(python, {"BENCH_DBOS_URL": self.args.dbos_url})
        self.stack.callback(driver.stop)
        self.dbos_versions = driver.call(op="versions")  # waits for DBOS.launch()
        self.contenders["dbos"] = Dbos("dbos", "DBOS (PostgreSQL, in-process)", driver)

    def stores(self) -> list[str]:
        """This project's stores the selected workloads run on (Redis aside)."""
        kinds = set(self.args.stores) if self.needs("W4", "W8") else set()
        if self.needs("W6"):
            kinds.add("postgresql")
        return [kind for kind in STORES if kind in kinds and kind != "redis"]

    def start(self) -> None:
        """Start every contender's worker (all at once), wait for them, warm them up."""
        redis_broker = f"{REDIS}/{BROKER_DB}"
        if self.needs("W1", "W2", "W3", "W4", "W8", "W10"):
            self.chain("chain", "plain chain (Redis result backend)", redis_broker)
        if self.needs("W1", "W2", "W3", "W6", "W7", "W10") or (
            self.needs("W4", "W8") and "redis" in self.args.stores
        ):
            self.our_saga(
                "saga",
                "celery-saga (Redis store)",
                self.store_url("redis"),
                redis_broker,
                "redis",
            )
        if self.needs("W7"):
            self.nested()
        if self.needs("W10"):
            self.our_saga(
                "otel-on",
                "celery-saga, tracing on (Redis store)",
                f"{REDIS}/{STORE_DB}?prefix=bench-{self.run_id}-otel:",
                redis_broker,
                "redis",
                traced=True,
            )
        if self.needs("W1", "W2", "W3") and self.args.orig_python:
            self.original(self.args.orig_python)
        for kind in self.stores():
            self.our_saga(
                kind,
                f"celery-saga ({kind} store)",
                self.store_url(kind),
                redis_broker,
                kind,
            )
        if self.needs("W6", "W8") and self.args.dbos_python:
            self.dbos(self.args.dbos_python)
        if self.needs("W5"):
            self.chain("chain-amqp", "plain chain, RabbitMQ (Redis results)", AMQP)
            self.our_saga(
                "saga-amqp",
                "celery-saga, RabbitMQ (Redis store)",
                self.store_url("redis"),
                AMQP,
                "redis",
            )
        self.cleanup.callback(
            drop_redis_prefix, RESULTS_DB, "celery-task-meta-", "celery-taskset-meta-"
        )
        self.cleanup.callback(drop_redis_prefix, STORE_DB, f"bench:ran:{self.run_id}")
        for worker in self.workers:
            worker.ready()
        print(f"{len(self.workers)} workers up; warming up...", flush=True)
        stores = ("saga", *STORES)
        for key, contender in self.contenders.items():
            contender.throughput("five", WARM_UP)
            if key in ("saga", "chain", "orig") and self.needs("W2"):
                contender.throughput("fanout", WARM_UP, f"bench:ran:{self.run_id}:warm")
            if key in ("saga", "chain", "orig") and self.needs("W3"):
                contender.latency(5)
            if key in ("saga", "postgresql", "dbos") and self.needs("W6"):
                contender.latency(5)
            if key in stores and self.needs("W4"):
                for length in self.args.w4_lengths[1:]:
                    contender.throughput(f"steps{length}", 1)

    def pick(self, *keys: str) -> list[Any]:
        """The contenders with these keys that this run has, in this order."""
        return [self.contenders[k] for k in keys if k in self.contenders]


@contextlib.contextmanager
def _stopping(worker: Any) -> Any:
    try:
        yield worker
    finally:
        worker.stop()


def run_workloads(bench: Bench, only: str | None = None) -> dict[str, Any]:
    """Run the selected workloads (or `only` that one); their sections of results.json."""
    from contenders import OurSaga
    from footprint import PostgresTables, ResultKeys, Sizer, sizer_for
    from workloads import by_length, footprint, latency, throughput

    args, out = bench.args, {}

    def needs(name: str) -> bool:
        return bench.needs(name) and only in (None, name)

    if needs("W1"):
        print(f"W1: {args.w1_sagas} sagas of 5 no-op steps", flush=True)
        out["W1"] = throughput(
            "W1",
            f"{args.w1_sagas} sagas of 5 no-op steps; Redis broker; one prefork worker "
            "with 2 processes per contender"
            + (
                f"; each repetition starts them in {args.w1_blocks} blocks of "
                f"{args.w1_sagas // args.w1_blocks}, the contenders taking turns block by block"
                if args.w1_blocks > 1
                else ""
            ),
            bench.pick("chain", "saga", "orig"),
            "five",
            args.w1_sagas,
            args.reps,
            [("saga", "chain"), ("orig", "saga"), ("orig", "chain")],
            blocks=args.w1_blocks,
        )
    if needs("W2"):
        print(f"W2: {args.w2_sagas} sagas of one step then a parallel group of 4", flush=True)
        out["W2"] = throughput(
            "W2",
            f"{args.w2_sagas} sagas of one step then a parallel group of 4; lost outputs: "
            "sagas whose record lacks the output of a step that ran",
            bench.pick("chain", "saga", "orig"),
            "fanout",
            args.w2_sagas,
            args.reps,
            [("saga", "chain"), ("orig", "saga")],
            ran_key=lambda key, rep: f"bench:ran:{bench.run_id}:{key}:{rep}",
        )
    if needs("W3"):
        print(f"W3: {args.w3_sagas} sagas one at a time, blocking on get()", flush=True)
        out["W3"] = latency(
            "W3",
            f"one 5-step saga at a time, {args.w3_sagas} in a row, the caller blocking on "
            "get(); latency from run() to get() returning",
            bench.pick("chain", "saga", "orig"),
            args.w3_sagas,
            args.reps,
            [("saga", "chain"), ("orig", "saga")],
        )
    if needs("W4"):
        sagas = w4_sagas(args)
        print(
            "W4: on each state store, "
            + ", ".join(f"{n} sagas of {length} steps" for length, n in sagas.items()),
            flush=True,
        )
        out["W4"] = by_length(
            "W4",
            ", ".join(f"{n} sagas of {length} no-op steps" for length, n in sagas.items())
            + " on each state store (memory is excluded: it cannot be shared across "
            "processes), started at once, every (store, length) pair once per repetition; "
            "at 5 steps against the plain chain and the Redis store; time per saga and "
            "workers' CPU per step at each length (target: CPU per step at 200 steps at most "
            "1.15x that at 5)",
            our_stores(bench, args.stores),
            bench.contenders.get("chain"),
            args.w4_lengths,
            sagas,
            args.reps,
        )
    if needs("W5"):
        print(f"W5: W1 ({args.w5_sagas} sagas) with the RabbitMQ broker", flush=True)
        out["W5"] = throughput(
            "W5",
            f"{args.w5_sagas} sagas of 5 no-op steps with the RabbitMQ broker; state in "
            "Redis (saga) or results in Redis (chain)",
            bench.pick("chain-amqp", "saga-amqp"),
            "five",
            args.w5_sagas,
            args.reps,
            [("saga-amqp", "chain-amqp")],
        )
    if needs("W6"):
        print(
            f"W6: {args.w6_sagas} workflows (sagas) of 5 no-op steps at once, and "
            f"{args.w6_latency_sagas} one at a time: DBOS against this project on PostgreSQL "
            "and Redis",
            flush=True,
        )
        if "dbos" not in bench.contenders:
            print("  no --dbos-python: DBOS is left out of W6", flush=True)
        contenders = [*our_stores(bench, ["postgresql", "redis"]), *bench.pick("dbos")]
        pairs = [("postgresql", "dbos"), ("redis", "dbos"), ("postgresql", "redis")]
        out["W6"] = {
            "description": "DBOS (durable steps checkpointed to PostgreSQL, run in the "
            "caller's process, no broker) against this project on the PostgreSQL store and "
            "on the Redis store (Redis broker, one prefork worker with 2 processes each); "
            "DBOS's system database is its own database on the same PostgreSQL server",
            "throughput": throughput(
                "W6",
                f"{args.w6_sagas} workflows (sagas) of 5 no-op steps started at once: DBOS "
                "with DBOS.start_workflow, all results awaited; time until all finished",
                contenders,
                "five",
                args.w6_sagas,
                args.reps,
                pairs,
            ),
            "latency": latency(
                "W6",
                f"one workflow (saga) of 5 no-op steps at a time, {args.w6_latency_sagas} in a "
                "row: DBOS calls the workflow function (it returns once the workflow "
                "finished), this project runs run() then get()",
                contenders,
                args.w6_latency_sagas,
                args.reps,
                pairs,
                percentiles=(50, 95, 99),
            ),
        }
    if needs("W7"):
        print(
            f"W7: {args.w7_sagas} sagas with a child saga as the middle of 3 steps, against "
            "the flat saga of 5",
            flush=True,
        )
        source = bench.contenders["saga"]
        label = "celery-saga, flat (Redis store)"
        flat = OurSaga("flat", label, source.bench, source.worker, bench.marks)
        out["W7"] = throughput(
            "W7",
            f"{args.w7_sagas} sagas of 3 steps whose middle step is a child saga of 3 "
            "(noop1, then the child's noop2-noop4, then noop5: the five no-op task bodies "
            "of W1, the middle three run by a child execution with its own record), against "
            "the flat saga of those 5 no-op steps, on the same worker (Redis store, Redis "
            "broker); a nested saga counts as completed when the parent is COMPLETED",
            [flat, bench.contenders["nested"]],
            "five",
            args.w7_sagas,
            args.reps,
            [("nested", "flat")],
        )
    if needs("W8"):
        print(f"W8: bytes kept per finished 5-step saga ({args.w8_sagas} sagas)", flush=True)
        stores = our_stores(bench, args.stores)
        sizers: dict[str, Sizer] = {
            c.key: sizer_for(c.key, bench.urls["saga" if c.key == "redis" else c.key])
            for c in stores
        }
        contenders = [*bench.pick("chain"), *stores, *bench.pick("dbos")]
        sizers["chain"] = ResultKeys(f"{REDIS}/{RESULTS_DB}")
        if "dbos" in bench.contenders:
            dbos_url = "postgresql+psycopg://" + args.dbos_url.split("://", 1)[1]
            sizers["dbos"] = PostgresTables(dbos_url, schema="dbos")
        out["W8"] = footprint(
            "W8",
            f"what {args.w8_sagas} finished sagas of 5 no-op steps leave, per saga: this "
            "project's stores (Redis: MEMORY USAGE of every key under the store's prefix; "
            "PostgreSQL and MariaDB: tables and indexes after VACUUM FULL / OPTIMIZE TABLE, "
            "and as written; SQLite: database pages after VACUUM, and in use as written; "
            "MongoDB: collStats data and indexes, or the documents' BSON size), the plain "
            "chain's Redis result backend (the results of all 5 steps, kept 1 day by "
            "default), DBOS's system tables (as PostgreSQL)",
            contenders,
            sizers,
            args.w8_sagas,
            args.reps,
            [("redis", "chain"), ("postgresql", "dbos"), ("postgresql", "redis")],
        )
    if needs("W9"):
        out["W9"] = web_workload(bench)
    if needs("W11"):
        out["W11"] = server_time_workload(bench)
    if needs("W10"):
        print(
            f"W10: {args.w10_sagas} sagas of 5 no-op steps, tracing on and off, and the plain "
            "chain",
            flush=True,
        )
        source = bench.contenders["saga"]
        off = OurSaga(
            "otel-off",
            "celery-saga, tracing off (Redis store)",
            source.bench,
            source.worker,
            bench.marks,
        )
        on = bench.contenders["otel-on"]
        if not traced(on) or traced(off):
            raise SystemExit("W10: the tracing is not on for (only) the 'tracing on' contender")
        out["W10"] = throughput(
            "W10",
            f"{args.w10_sagas} sagas of 5 no-op steps (W1's workload) on the Redis store with "
            "celery-saga's OpenTelemetry instrumentation on (celery-saga-opentelemetry in the "
            "worker, started with CELERY_SAGA_BENCH_OTEL=1, and in the producer during its "
            "runs; spans through a BatchSpanProcessor to an exporter that drops them) and off, "
            "each with its own worker, and the plain chain as the baseline; Redis broker",
            [*bench.pick("chain"), off, on],
            "five",
            args.w10_sagas,
            args.reps,
            [("otel-on", "otel-off"), ("otel-on", "chain"), ("otel-off", "chain")],
        )
    return out


def traced(contender: Any) -> bool:
    """Whether a saga this contender runs records the trace it was started in (W10)."""
    run = contender.throughput("five", 1, keep=True)
    try:
        execution = contender.backend.get(run.ids[0])
        return execution is not None and execution.trace_context is not None
    finally:
        contender.forget(run.ids)


def web_workload(bench: Bench) -> dict[str, Any]:
    """W9: seed each store, run its real sagas, start its web view, time the pages."""
    import web_view
    from bench_app import build
    from processes import Worker
    from web_seed import WebStore
    from workloads import web_pages

    args = bench.args
    kinds = [kind for kind in WEB_STORES if kind in args.stores]
    if not kinds:
        raise SystemExit(f"W9 runs on the {' and '.join(WEB_STORES)} stores: add one to --stores")
    n = args.w9_executions
    print(
        f"W9: the web view over {n:,} stored executions, on the {', '.join(kinds)} store"
        f"{'s' if len(kinds) > 1 else ''}; {args.w9_requests} requests of each page per "
        "repetition",
        flush=True,
    )
    broker = f"{REDIS}/{BROKER_DB}"
    stores = [WebStore.for_kind(kind, n, f"{REDIS}/{STORE_DB}", POSTGRES) for kind in kinds]
    queues = {store.kind: bench._queue(f"web-{store.kind}", broker) for store in stores}

    def worker_for(store: WebStore) -> Any:
        env = {**bench.base_env, "BENCH_BROKER": broker, "BENCH_STORE": store.url}
        return Worker("saga", queues[store.kind], env)

    def app_for(store: WebStore) -> Any:
        return build("saga", queues[store.kind], store.url, broker)

    view = web_view.prepare(
        stores,
        executions=n,
        reseed=args.w9_reseed,
        worker_for=worker_for,
        app_for=app_for,
        env={**bench.base_env, "BENCH_BROKER": broker},
    )

    def measure(page: Any) -> tuple[list[float], float]:
        before = page.server.cpu_seconds()
        times = web_view.timed(page, args.w9_requests)
        return times, page.server.cpu_seconds() - before

    try:
        section = web_pages(
            "W9",
            f"the web view (`celery -A proj saga web`: uvicorn, one process, serving "
            f"celery_saga_web.create_app) over {n:,} stored executions of 5 steps per store "
            "(four saga names, most completed, some compensated, failed, cancelled or "
            "reverted), plus one 50-step and one compensated execution run by a worker; "
            f"each repetition requests every page {args.w9_requests} times in a row over "
            "HTTP (httpx, one keep-alive connection), the pages alternating; a request is "
            "timed from sending it to having read the whole page",
            view.pages,
            args.reps,
            args.w9_requests,
            measure,
        )
    finally:
        view.close()
    section["executions"] = n
    section["stores"] = view.stores
    return section


def server_time_workload(bench: Bench) -> dict[str, Any]:
    """W11: each version's store alone on a private redis-server; its server time per step."""
    import server_time

    args = bench.args
    print(
        f"W11: Redis server time per step, {args.w11_sagas} sagas of 5 no-op steps per "
        "version: this version against celery-saga-redis 0.4.0",
        flush=True,
    )
    broker = f"{REDIS}/{BROKER_DB}"
    return server_time.workload(
        n=args.w11_sagas,
        reps=args.reps,
        timeout=args.timeout,
        broker=broker,
        env=bench.base_env,
        queue=lambda key: bench._queue(f"w11-{key}", broker),
        baseline_python=args.baseline_python,
    )


def w4_sagas(args: argparse.Namespace) -> dict[int, int]:
    """W4's sagas per length: ``--w4-sagas`` at 5 steps, the same number of steps above."""
    return {
        length: args.w4_sagas if length == 5 else max(2, round(args.w4_sagas * 5 / length))
        for length in args.w4_lengths
    }


def our_stores(bench: Bench, kinds: list[str]) -> list[Any]:
    """This project's contender on each store of `kinds`, keyed by the store's name."""
    from contenders import OurSaga

    stores = []
    for kind in kinds:
        source = bench.contenders.get("saga" if kind == "redis" else kind)
        if source is not None:
            label = f"celery-saga ({kind} store)"
            stores.append(OurSaga(kind, label, source.bench, source.worker, bench.marks))
    return stores


def command(args: argparse.Namespace) -> str:
    """The command that reproduces this run's tables (without this machine's paths)."""
    from report import command_for

    return command_for(args.argv)


def with_run(
    args: argparse.Namespace, section: dict[str, Any], began: tuple[str, tuple[float, ...]]
) -> None:
    """Record in `section` the run that made it: when, how often, load, machine, command."""
    date, load = began
    section["run"] = {
        "date": date,
        "reps": args.reps,
        "quick": args.quick,
        "load_average": {"start": list(load), "end": list(os.getloadavg())},
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "command": command(args),
    }


def run_selected(bench: Bench) -> dict[str, Any]:
    """Run the selected workloads one by one, each section with its own run record."""
    out: dict[str, Any] = {}
    for name in WORKLOADS:
        if bench.needs(name):
            began = (time.strftime("%Y-%m-%d %H:%M %Z"), os.getloadavg())
            section = run_workloads(bench, only=name)[name]
            with_run(bench.args, section, began)
            out[name] = section
    return out


def write_results(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Merge this run into results.json: replace what it made, keep the other sections."""
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        existing = {}
    from report import legacy_run

    merged = {k: v for k, v in existing.items() if k not in OWN_KEYS}
    # A section from before sections kept their own run record was made by the run the
    # top-level keys describe: keep that record with it, since this run replaces them.
    for section in merged.values():
        if isinstance(section, dict) and "run" not in section and existing.get("config"):
            section["run"] = legacy_run(existing)
    merged.update(report)  # this run's sections replace the same ones of an earlier run
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write results.json, print the table."""
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    load_start = os.getloadavg()  # the machine may be shared: say how busy it was
    run_id = uuid.uuid4().hex[:8]
    # W4's longer sagas (and W9's 50 steps), defined by bench_app here and in the workers.
    lengths = args.w4_lengths[1:] + ([50] if "W9" in args.workloads else [])
    os.environ["BENCH_LENGTHS"] = ",".join(str(n) for n in sorted(set(lengths)))
    if not args.orig_python and any(w in args.workloads for w in ("W1", "W2", "W3")):
        print("no --orig-python: celery-saga 0.1.1 is left out of this run", flush=True)
    report: dict[str, Any] = {
        "version": 3,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {
            "sizes": {k: getattr(args, f"{k}_sagas") for k in SIZED},
            "w4_lengths": args.w4_lengths,
            "w9_executions": args.w9_executions,
            "w9_requests": args.w9_requests,
            "reps": args.reps,
            "count_sagas": args.count_sagas,
            "workloads": args.workloads,
            "stores": args.stores,
            "quick": args.quick,
            "orig_get_interval": args.orig_get_interval,
            "worker": "celery worker -P prefork -c 2, one per contender, own queue",
            "argv": args.argv,
            "command": command(args),
        },
    }
    os.environ.setdefault("BENCH_STATS_URL", f"{REDIS}/{STORE_DB}")
    if args.count_sagas > 0:
        print(f"counting pass ({args.count_sagas} sagas, not timed)...", flush=True)
        report["counts"] = count_pass(run_id, args.count_sagas)
    with contextlib.ExitStack() as cleanup, contextlib.ExitStack() as stack:
        bench = Bench(args, run_id, stack, cleanup)
        bench.start()
        report.update(run_selected(bench))
    report["machine"] = machine(args.orig_python, bench.dbos_versions)
    report["machine"]["load_average"] = {"start": load_start, "end": os.getloadavg()}
    report["duration_seconds"] = round(time.monotonic() - started, 1)
    results = write_results(Path(args.out), report)

    from report import render_text

    print()
    print(render_text(results))
    print(f"results written to {args.out} ({report['duration_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
