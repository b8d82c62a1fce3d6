"""Redis fixtures: a 3-master Redis Cluster, a TLS server and an ACL server of our own.

Each is a real redis-server started on free loopback ports for the session and
stopped afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import AclUser, TlsRedis
from support import (
    REDIS_CLUSTER_URL,
    REDIS_SERVER,
    RedisProcess,
    ServiceUnavailable,
    drop_cluster_prefix,
    free_ports,
    start_redis_cluster,
    unavailable,
    wait_until,
)

from celery_saga_redis import RedisSagaBackend


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """The seed URL of a 3-master Redis Cluster on loopback ports, stopped afterwards.

    CELERY_SAGA_REDIS_CLUSTER_URL points at an existing cluster instead.
    """
    if REDIS_CLUSTER_URL:
        yield REDIS_CLUSTER_URL
        return
    try:
        cluster = start_redis_cluster(masters=3)
    except ServiceUnavailable as exc:
        unavailable(f"cannot start a local Redis Cluster: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_store_url(redis_cluster: str, unique: str) -> Iterator[str]:
    """A cluster store URL with a key prefix of its own, cleaned up afterwards."""
    prefix = f"t-{unique}:"
    yield f"{redis_cluster}/0?cluster=true&prefix={prefix}"
    drop_cluster_prefix(redis_cluster, prefix)


# -- a TLS server --------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise ServiceUnavailable(f"openssl {args[0]} failed: {done.stderr[-1000:]}")


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    if shutil.which("openssl") is None:
        raise ServiceUnavailable("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=celery-saga test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A redis-server on a free port with TLS only (--port 0), stopped afterwards.

    Skipped, in CI too, when this redis-server build has no TLS support.
    """
    import redis

    if shutil.which(REDIS_SERVER) is None:
        unavailable(f"{REDIS_SERVER} is not installed (or not on PATH)")
    directory = tmp_path_factory.mktemp("redis-tls")
    try:
        ca, cert, key = make_certificates(directory / "certs")
    except ServiceUnavailable as exc:
        unavailable(f"cannot make test certificates: {exc}")
    (port,) = free_ports(1)
    server = RedisProcess(
        directory / "server",
        port,
        [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        ],
        name="TLS redis-server",
    )  # fmt: skip
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=5
    )
    try:

        def up() -> bool:
            if server.exited():
                log = server.log()
                if "TLS" in log and ("not supported" in log or "Bad directive" in log):
                    pytest.skip(f"this redis-server build has no TLS support:\n{log[-500:]}")
                raise ServiceUnavailable(f"the TLS redis-server exited:\n{log}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return False

        try:
            wait_until(up, 30, "the TLS redis-server to accept connections")
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield TlsRedis(port, ca)
    finally:
        client.close()
        server.stop()


# -- a server of our own for ACL users --------------------------------------------------


@pytest.fixture(scope="session")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a plain redis-server of our own (users are created on it, not on 6379)."""
    import redis

    if shutil.which(REDIS_SERVER) is None:
        unavailable(f"{REDIS_SERVER} is not installed (or not on PATH)")
    (port,) = free_ports(1)
    server = RedisProcess(
        tmp_path_factory.mktemp("redis-acl"), port, ["--port", str(port)], name="ACL redis-server"
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:

        def up() -> bool:
            if server.exited():
                raise ServiceUnavailable(f"the ACL redis-server exited:\n{server.log()}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return False

        try:
            wait_until(up, 30, "the ACL redis-server to accept connections")
        except ServiceUnavailable as exc:
            unavailable(str(exc))
        yield port
    finally:
        client.close()
        server.stop()


@pytest.fixture
def acl_user(acl_redis: int, unique: str) -> Iterator[AclUser]:
    """A fresh ACL user on our own server, limited to one key prefix; deleted afterwards."""
    import redis

    user = AclUser(acl_redis, f"saga-{unique}", f"pw-{unique}-s3cret", f"t-{unique}:")
    admin = redis.Redis(host="127.0.0.1", port=acl_redis, socket_timeout=5)
    admin.acl_setuser(
        user.name,
        enabled=True,
        reset=True,
        passwords=[f"+{user.password}"],
        keys=[f"{user.prefix}*"],
        channels=[f"{user.prefix}*"],
        commands=["+@all", "-@dangerous"],
    )
    try:
        yield user
    finally:
        admin.acl_deluser(user.name)
        for key in admin.scan_iter(match=f"{user.prefix}*", count=1000):
            admin.delete(key)
        admin.close()


# `store_url` and `store`: a fresh store on standalone Redis and on the cluster, for the
# modules that do not define their own (a module's own fixture wins).
@pytest.fixture(params=["standalone", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh store's URL, on standalone Redis and on the cluster."""
    name = "redis_store_url" if request.param == "standalone" else "redis_cluster_store_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[RedisSagaBackend]:
    """A Redis store at `store_url`, closed afterwards."""
    backend = RedisSagaBackend.from_url(store_url)
    yield backend
    backend.close()
