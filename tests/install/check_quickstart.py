"""Install one of the README's lines in a fresh venv and run the quick start on it.

    python tests/install/check_quickstart.py EXTRA WHEEL_DIR WORK_DIR

Makes a venv in WORK_DIR, runs ``pip install celery-saga[EXTRA]`` in it exactly as
the README writes it (pip finds our wheels through ``PIP_FIND_LINKS``, pinned to
their versions by ``PIP_CONSTRAINT``, so nothing of ours comes from the index), then
starts a real worker of ``examples/shop.py`` (``celery -A shop worker``) from that
venv and runs ``python shop.py`` against it. Each extra uses the broker and the
state store a user of it would: the README's Redis for ``redis``, RabbitMQ with the
extra's store for the others. Exits non-zero with the reason on any failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RABBITMQ = os.environ.get("CELERY_SAGA_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRESQL = os.environ.get(
    "CELERY_SAGA_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL = os.environ.get("CELERY_SAGA_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
#: The broker of the README's quick start, used as written for the `redis` extra.
README_BROKER = "redis://localhost:6379/0"


def store_url(extra: str, work: Path, tag: str) -> str:
    """The state store the quick-start app uses for `extra` (a fresh one per run)."""
    if extra == "redis":
        return f"redis://localhost:6379/1?prefix=install-{tag}:"
    if extra == "postgresql":
        return f"{POSTGRESQL}?table_prefix=install_{tag}_"
    if extra == "mysql":
        return f"{MYSQL}?table_prefix=install_{tag}_"
    if extra == "sql":
        return f"sqlite:///{work / 'shop.db'}"
    if extra == "mongo":
        return f"{mongo_url()}/install_{tag}"
    raise SystemExit(f"no quick-start store for extra {extra!r}")


def mongo_url() -> str:
    """A real mongod from CELERY_SAGA_MONGO_URL, else a SecantusDB server of our own."""
    if os.environ.get("CELERY_SAGA_MONGO_URL"):
        return os.environ["CELERY_SAGA_MONGO_URL"].rstrip("/")
    from secantus import SecantusDBServer

    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=tempfile.mkdtemp())
    server.start()
    _cleanups.append(server.stop)
    return str(server.uri).rstrip("/")


_cleanups: list[Any] = []


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def install(extra: str, wheels: Path, venv: Path) -> None:
    """A fresh venv with ``pip install celery-saga[extra]``, typed as the README has it."""
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    versions = sorted(p.name.split("-")[:2] for p in wheels.glob("celery_saga*.whl"))
    pins = wheels / "pins.txt"
    pins.write_text("".join(f"{name.replace('_', '-')}=={ver}\n" for name, ver in versions))
    env = dict(os.environ)
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(wheels), env.get("PIP_FIND_LINKS")]))
    env["PIP_CONSTRAINT"] = " ".join(filter(None, [str(pins), env.get("PIP_CONSTRAINT")]))
    try:
        run([str(venv / "bin" / "pip"), "install", f"celery-saga[{extra}]"], env=env,
            capture_output=True)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"pip install celery-saga[{extra}] failed:\n{exc.stdout}\n{exc.stderr}"
        ) from None


def quickstart(extra: str, venv: Path, work: Path) -> dict[str, Any]:
    """Start ``celery -A shop worker`` from `venv`, run ``python shop.py``, return its output."""
    tag = uuid.uuid4().hex[:8]
    url = store_url(extra, work, tag)
    _cleanups.append(lambda: cleanup(extra, venv, tag, url))
    env = dict(os.environ, SHOP_SAGA_BACKEND=url)
    if extra != "redis":  # the extra brings no Redis transport: use the other broker
        env["CELERY_BROKER_URL"] = RABBITMQ
    # A queue of this run's own, so no other worker on the same broker takes its messages.
    env["SHOP_QUEUE"] = f"install-{tag}"
    log = (work / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(venv / "bin" / "celery"), "-A", "shop", "worker", "-c", "2", "-l", "info",
         "-Q", env["SHOP_QUEUE"]],
        cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        done = run(
            [str(venv / "bin" / "python", ), "shop.py"],
            cwd=EXAMPLES, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"python shop.py failed:\n{exc.stdout}\n{exc.stderr}\n{_tail(work)}"
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(f"python shop.py did not finish: {exc}\n{_tail(work)}") from None
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()


#: Removes what a run left in its store, run with the fresh venv's Python (it has the
#: store's driver). SQLite and SecantusDB live in the run's own folder.
_CLEANUP = {
    "redis": """
import redis, sys
client = redis.Redis.from_url("redis://localhost:6379/1")
keys = list(client.scan_iter(match=f"install-{sys.argv[1]}:*", count=1000))
if keys:
    client.delete(*keys)
""",
    "postgresql": """
import sys
from sqlalchemy import create_engine
from celery_saga_sql.schema import build_tables
from celery_saga_sql.urls import parse_store_url
engine = create_engine(parse_store_url(sys.argv[2]).url)
build_tables(f"install_{sys.argv[1]}_").metadata.drop_all(engine)
engine.dispose()
""",
}
_CLEANUP["mysql"] = _CLEANUP["postgresql"]


def cleanup(extra: str, venv: Path, tag: str, url: str) -> None:
    """Drop the tables or keys the quick start made in a shared server."""
    code = _CLEANUP.get(extra)
    if code:
        run([str(venv / "bin" / "python"), "-c", code, tag, url.split("?")[0]])


def _tail(work: Path) -> str:
    lines = (work / "worker.log").read_text(errors="replace").splitlines()
    return "worker log (last 40 lines):\n" + "\n".join(lines[-40:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web(venv: Path, work: Path) -> None:
    """``celery -A shop saga web`` from the venv serves its pages (README: "See your sagas")."""
    port = free_port()
    log = (work / "worker.log").open("w")
    server = subprocess.Popen(
        [str(venv / "bin" / "celery"), "-A", "shop", "saga", "web", "--port", str(port),
         "--backend", "memory://"],
        cwd=EXAMPLES, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                pages = {
                    path: urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
                    for path in ("/", "/definitions", "/metrics")
                }
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"celery saga web did not serve:\n{_tail(work)}") from None
                time.sleep(0.2)  # polling a starting server, with a deadline
        bodies = {path: page.read().decode() for path, page in pages.items()}
        if "order_saga" not in bodies["/definitions"] or "celery_saga" not in bodies["/metrics"]:
            raise SystemExit(f"unexpected pages from celery saga web: {bodies}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print("celery-saga[web]: installed as written; celery saga web served its pages")


#: With the API alone (no SDK) the instrumentation must load, patch and unpatch cleanly.
_OTEL = """
from celery_saga import tracing
from celery_saga_opentelemetry import CelerySagaInstrumentor
CelerySagaInstrumentor().instrument()
assert tracing.hooks is not None, "instrument() set no trace hooks"
CelerySagaInstrumentor().uninstrument()
assert tracing.hooks is None, "uninstrument() left trace hooks"
print("celery-saga[otel]: installed as written; instrument() and uninstrument() work")
"""


def main() -> None:
    extra, wheels, work = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv = work / f"venv-{extra}"
    if extra in ("web", "otel"):
        install(extra, wheels, venv)
        if extra == "web":
            web(venv, work)
        else:
            run([str(venv / "bin" / "python"), "-c", _OTEL])
        return
    try:
        install(extra, wheels, venv)
        output = quickstart(extra, venv, work)
    finally:
        for undo in reversed(_cleanups):
            undo()
    order = output["order_saga"]
    expected = {"validated": True, "reserved": True, "order_id": "abc-123"}
    missing = {k: v for k, v in expected.items() if order.get(k) != v}
    if missing or "confirmation" not in order or "transaction_id" not in output["order_saga_fn"]:
        raise SystemExit(f"unexpected quick-start output for [{extra}]: {output}")
    print(f"celery-saga[{extra}]: installed as written; the quick start completed: {order}")


if __name__ == "__main__":
    main()
