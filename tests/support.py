"""Helpers shared by the test tree: service URLs, reachability, key cleanup."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("CELERY_SAGA_REDIS_URL", "redis://127.0.0.1:6379")
RABBITMQ_URL = os.environ.get("CELERY_SAGA_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: Redis database numbers used by the tests (state stores / brokers).
STORE_DB = int(os.environ.get("CELERY_SAGA_TEST_STORE_DB", "12"))
BROKER_DB = int(os.environ.get("CELERY_SAGA_TEST_BROKER_DB", "13"))


def reachable(url: str, default_port: int) -> bool:
    """True if a TCP connection to the URL's host and port succeeds."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


def require(url: str, default_port: int, what: str) -> None:
    """Fail (CI) or skip (elsewhere) when the service is not reachable."""
    if reachable(url, default_port):
        return
    message = f"{what} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: every service must be up)")
    pytest.skip(f"{message}; start it to run this test")


def drop_prefix(url: str, db: int, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(f"{url}/{db}")
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


#: The state stores the end-to-end suite runs on (nox sets this per matrix cell).
STORES = [
    s.strip()
    for s in os.environ.get("CELERY_SAGA_TEST_STORES", "memory,redis").split(",")
    if s.strip()
]
#: The Celery version of this test run ("lowest" or "newest"; nox sets it per cell).
CELERY_CELL = os.environ.get("CELERY_SAGA_TEST_CELERY", "newest")
#: The long lease and fault-injection tests run once per store, in the newest-Celery
#: cells: what they check is the store's and the runtime's, and CI time is finite.
LONG_PROCESS_TESTS = pytest.mark.skipif(
    CELERY_CELL == "lowest",
    reason="lease and fault tests run in the newest-Celery cells (CELERY_SAGA_TEST_CELERY)",
)

#: Stores that worker processes can share (all but memory).
SHARED_STORES = [s for s in STORES if s != "memory"]

POSTGRES_URL = os.environ.get(
    "CELERY_SAGA_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("CELERY_SAGA_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
MONGO_URL = os.environ.get("CELERY_SAGA_MONGO_URL", "").strip()


def sql_drop_tables(url: str, prefix: str) -> None:
    """Drop the SQL store tables with `prefix`."""
    from sqlalchemy import create_engine

    from celery_saga_sql.schema import build_tables
    from celery_saga_sql.urls import parse_store_url

    engine = create_engine(parse_store_url(url).url)
    try:
        build_tables(prefix).metadata.drop_all(engine)
    finally:
        engine.dispose()


_secantus: list[Any] = []


def mongo_base_url() -> str:
    """A real mongod from CELERY_SAGA_MONGO_URL, else a SecantusDB server started once."""
    if MONGO_URL:
        return MONGO_URL
    if not _secantus:
        import atexit
        import tempfile

        try:
            from secantus import SecantusDBServer
        except ImportError as exc:
            if IN_CI:
                pytest.fail(f"SecantusDB is not installed ({exc}) (CI=true)")
            pytest.skip(f"SecantusDB is not installed ({exc})")
        server = SecantusDBServer(
            host="127.0.0.1", port=0, storage_path=tempfile.mkdtemp(prefix="secantus-")
        )
        server.start()
        atexit.register(server.stop)
        _secantus.append(server)
    return str(_secantus[0].uri)


@contextmanager
def state_store(kind: str, tag: str, tmp_dir: str) -> Iterator[Any]:
    """A fresh state store (instance or URL) of `kind`, removed afterwards."""
    if kind == "memory":
        from celery_saga.backends import MemorySagaBackend

        yield MemorySagaBackend()
    elif kind == "redis":
        require(REDIS_URL, 6379, "Redis")
        prefix = f"e2e-{tag}:"
        try:
            yield f"{REDIS_URL}/{STORE_DB}?prefix={prefix}"
        finally:
            drop_prefix(REDIS_URL, STORE_DB, prefix)
    elif kind == "redis-cluster":
        base = redis_cluster_url()
        prefix = f"e2e-{tag}:"
        try:
            yield f"{base}/0?cluster=true&prefix={prefix}"
        finally:
            drop_cluster_prefix(base, prefix)
    elif kind in ("postgresql", "mysql", "sqlite"):
        base = {
            "postgresql": POSTGRES_URL,
            "mysql": MYSQL_URL,
            "sqlite": f"sqlite:///{tmp_dir}/e2e-{tag}.db",
        }[kind]
        if kind != "sqlite":
            require(base, 5432 if kind == "postgresql" else 3306, kind)
        prefix = f"e{tag}_"
        url = f"{base}?table_prefix={prefix}"
        try:
            yield url
        finally:
            sql_drop_tables(url, prefix)
    elif kind == "mongo":
        base = mongo_base_url().rstrip("/")
        prefix = f"e{tag}_"
        scheme, _, rest = base.partition("://")
        hosts = rest.split("/", 1)[0].split("?", 1)[0]
        url = f"{scheme}://{hosts}/celery_saga_e2e?collection_prefix={prefix}"
        try:
            yield url
        finally:
            from pymongo import MongoClient

            client: Any = MongoClient(f"{scheme}://{hosts}/")
            client["celery_saga_e2e"].drop_collection(f"{prefix}executions")
            client.close()
    else:
        raise ValueError(f"no test store for {kind!r}")


# -- throwaway redis-server processes: a 3-master cluster, TLS and ACL servers -------------


class ServiceUnavailable(RuntimeError):
    """A local service could not be started (binary missing, ports taken, ...)."""


def unavailable(message: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere): the pattern of `require`, for services we start."""
    if IN_CI:
        pytest.fail(f"{message} (CI=true: every service must be up)")
    pytest.skip(message)


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """`count` loopback ports the OS reports free (with port+10000 free too when `bus`).

    A cluster node also listens on its bus port (port + 10000), so with `bus`
    only ports below 55535 whose bus port is free are chosen.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 200):
            if len(ports) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
            port = sock.getsockname()[1]
            if bus:
                if port >= 55535:
                    continue
                bus_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    bus_sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    bus_sock.close()
                    continue
                held.append(bus_sock)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise ServiceUnavailable(f"could not find {count} free loopback ports")
    return ports


def _redis_ready(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def poll(
    condition: Callable[[], Any], timeout: float, on_timeout: Callable[[str], NoReturn], what: str
) -> Any:
    """Poll `condition` with backoff until truthy; after `timeout` seconds `on_timeout` raises."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            on_timeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _unavailable(message: str) -> NoReturn:
    raise ServiceUnavailable(message)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until truthy; raise ServiceUnavailable after `timeout` seconds."""
    return poll(condition, timeout, _unavailable, what)


class RedisProcess:
    """One `redis-server` child process with a directory of its own."""

    def __init__(self, directory: Path, port: int, args: list[str], name: str = "redis") -> None:
        self.directory = directory
        self.port = port
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.logfile = directory / "redis.log"
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(directory),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        self._log.flush()
        return self.logfile.read_text(errors="replace")[-3000:]

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


REDIS_SERVER = os.environ.get("CELERY_SAGA_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("CELERY_SAGA_REDIS_CLI", "redis-cli")
#: An existing cluster to use instead of starting one (``redis://host:port``).
REDIS_CLUSTER_URL = os.environ.get("CELERY_SAGA_REDIS_CLUSTER_URL", "").strip()


def _need_binaries(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            raise ServiceUnavailable(f"{name} is not installed (or not on PATH)")


class LocalRedisCluster:
    """A Redis Cluster of `masters` redis-server processes on loopback ports."""

    def __init__(self, nodes: list[RedisProcess], directory: Path) -> None:
        self.nodes = nodes
        self.directory = directory

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """A seed URL; the cluster client discovers the other nodes from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis_cluster(
    masters: int = 3, timeout: float = 60.0, attempts: int = 3
) -> LocalRedisCluster:
    """Start a Redis Cluster of `masters` nodes and wait until every node says it is ok.

    Raises `ServiceUnavailable` when redis-server/redis-cli are missing or the
    cluster cannot be formed (a port taken between choosing and binding is
    retried with new ports).
    """
    _need_binaries(REDIS_SERVER, REDIS_CLI)
    last: ServiceUnavailable | None = None
    for _ in range(attempts):
        try:
            return _start_redis_cluster_once(masters, timeout)
        except ServiceUnavailable as exc:
            last = exc
    assert last is not None
    raise last


def _start_redis_cluster_once(masters: int, timeout: float) -> LocalRedisCluster:
    import redis

    directory = Path(tempfile.mkdtemp(prefix="saga-redis-cluster-"))
    nodes: list[RedisProcess] = []
    clients: list[Any] = []
    try:
        for port in free_ports(masters, bus=True):
            node_dir = directory / f"node-{port}"
            nodes.append(
                RedisProcess(
                    node_dir,
                    port,
                    [
                        "--port",
                        str(port),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / f"nodes-{port}.conf"),
                        "--cluster-node-timeout",
                        "5000",
                    ],
                    name=f"cluster node {port}",
                )
            )
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=5) for n in nodes]
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.1)

        for node, client in zip(nodes, clients):

            def up(node: RedisProcess = node, client: Any = client) -> bool:
                if node.exited():
                    raise ServiceUnavailable(f"{node.name} exited:\n{node.log()}")
                return _redis_ready(client)

            wait_until(up, left(), f"{node.name} to accept connections")
        create = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in (n.port for n in nodes)),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=left(),
            stdin=subprocess.DEVNULL,
        )
        if create.returncode != 0:
            raise ServiceUnavailable(
                f"redis-cli --cluster create failed ({create.returncode}):\n"
                f"{create.stdout[-2000:]}{create.stderr[-2000:]}"
            )

        def formed() -> bool:
            for client in clients:
                info = client.cluster("INFO")
                if isinstance(info, bytes):
                    info = info.decode()
                if isinstance(info, str):
                    info = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
                if str(info.get("cluster_state")) != "ok":
                    return False
                if int(info.get("cluster_known_nodes", 0)) != masters:
                    return False
                if int(info.get("cluster_slots_ok", 0)) != 16384:
                    return False
            return True

        wait_until(formed, left(), "cluster_state:ok on every node")
        return LocalRedisCluster(nodes, directory)
    except BaseException:
        for node in nodes:
            node.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        for client in clients:
            client.close()


def drop_cluster_prefix(url: str, prefix: str) -> None:
    """Delete every key starting with `prefix` on every master of a cluster."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(url)
    try:
        for node in client.get_primaries():
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000, target_nodes=node))
            for key in keys:
                client.delete(key)
    finally:
        client.close()


_cluster: list[LocalRedisCluster] = []
_cluster_failure: list[str] = []
_cluster_lock = threading.Lock()


def redis_cluster_url() -> str:
    """CELERY_SAGA_REDIS_CLUSTER_URL, else a local cluster started once per process.

    Calls `unavailable` (fail in CI, skip elsewhere) when it cannot be started.
    """
    if REDIS_CLUSTER_URL:
        return REDIS_CLUSTER_URL
    with _cluster_lock:
        if _cluster_failure:  # tried once in this process already: do not wait again
            unavailable(_cluster_failure[0])
        if not _cluster:
            import atexit

            try:
                cluster = start_redis_cluster()
            except ServiceUnavailable as exc:
                _cluster_failure.append(f"cannot start a local Redis Cluster: {exc}")
                unavailable(_cluster_failure[0])
            atexit.register(cluster.stop)
            _cluster.append(cluster)
        return _cluster[0].url
