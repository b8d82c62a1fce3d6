"""The benchmark harness (``nox -s bench``): sagas against plain Celery chains and 0.1.1.

Workloads (Redis broker, one prefork worker with 2 processes per contender, unless
said otherwise):

- W1: N sagas of 5 no-op steps: this project (Redis state store), the same tasks as
  a plain Celery chain with a Redis result backend, and celery-saga 0.1.1 with its
  Redis backend.
- W2: N sagas of one step then a parallel group of 4, the same three contenders,
  plus for each the number of sagas whose record lacks an output of a step that ran.
- W3: one saga at a time, N in a row, the caller blocking on ``get()``: p50 and p99.
- W4: W1 on each of this project's state stores (memory excluded: it cannot be
  shared across processes), each against the plain chain.
- W5: W1 with the RabbitMQ broker: this project against the plain chain.
- W7: the cost of a child saga: N sagas of 3 steps whose middle step is a child saga of
  3 (the same five no-op task bodies, the middle three run by a child execution),
  against W1's flat saga of 5 no-op steps, on the same worker (Redis store, Redis
  broker); the figure is the ratio nested / flat.

Every comparison runs in this one invocation, alternating the contenders (the order
rotates each repetition), for at least 3 repetitions; the table reports medians,
spread (min-max) and ratios against the issue's targets. Workers are started once
for the whole run, each contender on its own queue, and warmed up first. A separate
counting pass (not timed) reports broker messages and state-store round trips per
step. celery-saga 0.1.1 uses the same import name as this project, so it runs in its
own venv, given by ``--orig-python`` (``nox -s bench`` makes it).

Results go to the terminal (one table) and to ``benchmarks/results.json`` (machine,
versions, every repetition's raw numbers); ``benchmarks/report.py`` turns that file
into ``docs/performance.md``.
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
#: Redis databases: broker, plain chain results, this project's store (and the
#: harness's own keys), 0.1.1's result backend, 0.1.1's records.
BROKER_DB, RESULTS_DB, STORE_DB, ORIG_RESULTS_DB, ORIG_STORE_DB = 3, 4, 5, 6, 7

#: Sizes from the issue, and the small ones of ``--quick``.
SIZES = {"w1": 400, "w2": 200, "w3": 200, "w4": 400, "w5": 400, "w7": 200, "count": 100, "reps": 3}
QUICK = {"w1": 40, "w2": 20, "w3": 20, "w4": 40, "w5": 40, "w7": 20, "count": 20, "reps": 3}
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W7")
#: The workloads with a ``--<w>-sagas`` size.
SIZED = ("w1", "w2", "w3", "w4", "w5", "w7")
STORES = ("redis", "postgresql", "mysql", "sqlite", "mongodb")
#: Keys of results.json this harness writes (other sections, e.g. "stores", are kept).
OWN_KEYS = ("version", "machine", "config", "started", "duration_seconds", "counts", *WORKLOADS)

WARM_UP = 20


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
        ("w4", "W4 sagas per store"),
        ("w5", "W5 sagas"),
        ("w7", "W7 sagas, nested and flat each"),
    ):
        parser.add_argument(f"--{key}-sagas", type=int, help=f"{what} (default {SIZES[key]})")
    parser.add_argument("--count-sagas", type=int, help="sagas of the counting pass (0: skip)")
    parser.add_argument("--reps", type=int, help="repetitions of each workload (default 3)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated, e.g. W1,W3"
    )
    parser.add_argument("--stores", default=",".join(STORES), help="W4's state stores")
    parser.add_argument(
        "--orig-python",
        help="interpreter of a venv with celery-saga==0.1.1 (without it, 0.1.1 is skipped)",
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
    if args.count_sagas is None:
        args.count_sagas = sizes["count"]
    if args.reps is None:
        args.reps = sizes["reps"]
    if args.reps < 1:
        parser.error("--reps must be at least 1 (the issue asks for 3 or more)")
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    args.stores = [s.strip().lower() for s in args.stores.split(",") if s.strip()]
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
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
    from bench_app import make
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
    app, saga, _ = make("saga", queue, store_url)
    published = {"n": 0}

    def on_publish(**_: Any) -> None:
        published["n"] += 1

    after_task_publish.connect(on_publish, weak=False)
    worker = Worker("saga", queue, env).ready()
    store = redis.Redis.from_url(f"{REDIS}/{STORE_DB}")
    try:
        caller_store = backend_for(app)
        caller_store.stats.reset()
        before = store.zcard(f"{prefix}idx:status:completed")
        for i in range(n):
            saga.run(i=i)
        _wait_completed(store, prefix, before, n)
    finally:
        worker.stop()
        after_task_publish.disconnect(on_publish)
    stats_client = redis.Redis.from_url(f"{REDIS}/{STORE_DB}", decode_responses=True)
    workers = {k: int(v) for k, v in stats_client.hgetall(key).items()}
    stats_client.delete(key)
    drop_redis_prefix(STORE_DB, prefix)
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


def machine(orig_python: str | None) -> dict[str, Any]:
    """The machine, the services and every package version of this run."""
    import celery
    import kombu

    mem_kb = (_first("/proc/meminfo", "MemTotal") or "0 kB").split()[0]
    mem = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() and int(mem_kb) else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor(),
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

    def our_saga(self, key: str, label: str, store: str, broker: str, kind: str) -> None:
        """Start a worker for this project on `store` and register its contender."""
        from bench_app import build
        from contenders import OurSaga
        from processes import Worker

        queue = self._queue(key, broker)
        env = {**self.base_env, "BENCH_BROKER": broker, "BENCH_STORE": store}
        worker = self.stack.enter_context(_stopping(Worker("saga", queue, env)))
        self.workers.append(worker)
        contender = OurSaga(key, label, build("saga", queue, store, broker), worker, self.marks)
        self.contenders[key] = contender
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

    def start(self) -> None:
        """Start every contender's worker (all at once), wait for them, warm them up."""
        redis_broker = f"{REDIS}/{BROKER_DB}"
        if self.needs("W1", "W2", "W3", "W4"):
            self.chain("chain", "plain chain (Redis result backend)", redis_broker)
        if self.needs("W1", "W2", "W3", "W7") or (self.needs("W4") and "redis" in self.args.stores):
            self.our_saga(
                "saga",
                "celery-saga (Redis store)",
                self.store_url("redis"),
                redis_broker,
                "redis",
            )
        if self.needs("W7"):
            self.nested()
        if self.needs("W1", "W2", "W3") and self.args.orig_python:
            self.original(self.args.orig_python)
        if self.needs("W4"):
            for kind in self.args.stores:
                if kind != "redis":
                    self.our_saga(
                        kind,
                        f"celery-saga ({kind} store)",
                        self.store_url(kind),
                        redis_broker,
                        kind,
                    )
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
        for key, contender in self.contenders.items():
            contender.throughput("five", WARM_UP)
            if key in ("saga", "chain", "orig") and self.needs("W2"):
                contender.throughput("fanout", WARM_UP, f"bench:ran:{self.run_id}:warm")
            if key in ("saga", "chain", "orig") and self.needs("W3"):
                contender.latency(5)

    def pick(self, *keys: str) -> list[Any]:
        """The contenders with these keys that this run has, in this order."""
        return [self.contenders[k] for k in keys if k in self.contenders]


@contextlib.contextmanager
def _stopping(worker: Any) -> Any:
    try:
        yield worker
    finally:
        worker.stop()


def run_workloads(bench: Bench) -> dict[str, Any]:
    """Run the selected workloads; their sections of results.json."""
    from contenders import OurSaga
    from workloads import latency, throughput

    args, out = bench.args, {}
    if bench.needs("W1"):
        print(f"W1: {args.w1_sagas} sagas of 5 no-op steps", flush=True)
        out["W1"] = throughput(
            "W1",
            f"{args.w1_sagas} sagas of 5 no-op steps; Redis broker; one prefork worker "
            "with 2 processes per contender",
            bench.pick("chain", "saga", "orig"),
            "five",
            args.w1_sagas,
            args.reps,
            [("saga", "chain"), ("orig", "saga"), ("orig", "chain")],
        )
    if bench.needs("W2"):
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
    if bench.needs("W3"):
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
    if bench.needs("W4"):
        print(f"W4: W1 ({args.w4_sagas} sagas) on each state store", flush=True)
        stores = []
        for kind in args.stores:
            source = bench.contenders["saga" if kind == "redis" else kind]
            label = f"celery-saga ({kind} store)"
            stores.append(OurSaga(kind, label, source.bench, source.worker, bench.marks))
        out["W4"] = throughput(
            "W4",
            f"{args.w4_sagas} sagas of 5 no-op steps on each state store (memory is "
            "excluded: it cannot be shared across processes), against the plain chain",
            [*bench.pick("chain"), *stores],
            "five",
            args.w4_sagas,
            args.reps,
            [(kind, "chain") for kind in args.stores],
        )
    if bench.needs("W5"):
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
    if bench.needs("W7"):
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
    return out


def write_results(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Merge this run into results.json: replace our sections, keep the others."""
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        existing = {}
    merged = {k: v for k, v in existing.items() if k not in OWN_KEYS}
    merged = {**report, **merged}
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return merged


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write results.json, print the table."""
    args = parse_args(argv)
    started = time.monotonic()
    load_start = os.getloadavg()  # the machine may be shared: say how busy it was
    run_id = uuid.uuid4().hex[:8]
    if not args.orig_python:
        print("no --orig-python: celery-saga 0.1.1 is left out of this run", flush=True)
    report: dict[str, Any] = {
        "version": 2,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": {
            "sizes": {k: getattr(args, f"{k}_sagas") for k in SIZED},
            "reps": args.reps,
            "count_sagas": args.count_sagas,
            "workloads": args.workloads,
            "stores": args.stores,
            "quick": args.quick,
            "orig_get_interval": args.orig_get_interval,
            "worker": "celery worker -P prefork -c 2, one per contender, own queue",
            "argv": sys.argv[1:] if argv is None else argv,
        },
    }
    os.environ.setdefault("BENCH_STATS_URL", f"{REDIS}/{STORE_DB}")
    if args.count_sagas > 0:
        print(f"counting pass ({args.count_sagas} sagas, not timed)...", flush=True)
        report["counts"] = count_pass(run_id, args.count_sagas)
    with contextlib.ExitStack() as cleanup, contextlib.ExitStack() as stack:
        bench = Bench(args, run_id, stack, cleanup)
        bench.start()
        report.update(run_workloads(bench))
    report["machine"] = machine(args.orig_python)
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
