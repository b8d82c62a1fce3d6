"""Install isolation: one store package, installed alone, runs sagas without the others.

``nox -s isolation`` runs this in a fresh venv that holds only celery-saga-core, one
store package and ``celery`` without extras (plus SecantusDB for the mongo check)::

    python tests/isolation/check_isolation.py redis|sql|mongo

1. the other store packages and their drivers (sqlalchemy, pymongo, redis) cannot
   be imported (`importlib.util.find_spec`);
2. a saga that completes and one that compensates run in eager mode on the store:
   redis on 127.0.0.1:6379 database 12 under a key prefix of its own (removed
   afterwards), sql on a SQLite file in a temporary directory, mongo on a SecantusDB
   server started here on a free port;
3. none of the other drivers was imported along the way (`sys.modules`), and this
   store's own driver was.

Any failure exits with status 1 and says what went wrong. When Redis is down the
redis check fails if CI=true and is skipped (status 0, with the reason) otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

#: Store kind -> (its package's import name, the driver it brings).
STORES = {
    "redis": ("celery_saga_redis", "redis"),
    "sql": ("celery_saga_sql", "sqlalchemy"),
    "mongo": ("celery_saga_mongo", "pymongo"),
}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("CELERY_SAGA_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = 12


class CheckFailed(Exception):
    """One of the isolation checks did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(f"this does not hold: {message}")
    print(f"  ok: {message}")


def others(kind: str) -> list[str]:
    """Import names of the packages and drivers of every store but `kind`."""
    return [name for other, names in STORES.items() if other != kind for name in names]


# -- the stores ------------------------------------------------------------------------
@contextmanager
def redis_store() -> Iterator[str | None]:
    parts = urlsplit(REDIS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2).close()
    except OSError as exc:
        message = f"Redis is not reachable at {REDIS_URL} ({exc})"
        if IN_CI:
            raise CheckFailed(f"{message} (CI=true: every service must be up)") from None
        print(f"SKIPPED: {message}; start it to run the redis isolation check")
        yield None
        return
    prefix = f"isolation-{uuid.uuid4().hex[:10]}:"
    try:
        yield f"{REDIS_URL}/{REDIS_DB}?prefix={prefix}"
    finally:
        import redis

        client = redis.Redis.from_url(f"{REDIS_URL}/{REDIS_DB}")
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            print(f"  removed {len(keys)} Redis keys under {prefix!r}")
        finally:
            client.close()


@contextmanager
def sql_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="isolation-sql-") as tmp:
        yield f"sqlite:///{tmp}/sagas.db"


@contextmanager
def mongo_store() -> Iterator[str]:
    from secantus import SecantusDBServer

    with tempfile.TemporaryDirectory(prefix="isolation-secantus-") as tmp:
        server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=tmp)
        server.start()
        try:
            hosts = urlsplit(server.uri).netloc
            yield f"mongodb://{hosts}/celery_saga_isolation?collection_prefix=isolation_"
        finally:
            server.stop()


STORE_URLS: dict[str, Callable[[], Any]] = {
    "redis": redis_store,
    "sql": sql_store,
    "mongo": mongo_store,
}


# -- the sagas --------------------------------------------------------------------------
def run_sagas(url: str) -> None:
    """A saga that completes and one that compensates, eagerly, on the store at `url`."""
    from celery import Celery

    from celery_saga import Saga, SagaCompensated, SagaStatus, StepResponse, StepStatus, saga_step
    from celery_saga.config import backend_for

    app = Celery("isolation", broker="memory://", set_as_current=False)
    app.conf.update(task_always_eager=True, saga_backend=url)
    ledger: dict[str, float] = {}

    @app.task(shared=False, name="isolation.refund")
    def refund(compensation_data: dict[str, Any]) -> None:
        ledger.pop(compensation_data["txn"], None)

    @saga_step(compensate=refund)
    @app.task(shared=False, name="isolation.charge")
    def charge(**order: Any) -> StepResponse:
        ledger[f"txn-{order['order_id']}"] = order["amount"]
        return StepResponse(output={"txn": f"txn-{order['order_id']}"})

    @app.task(shared=False, name="isolation.ship")
    def ship(**order: Any) -> dict[str, Any]:
        if order["item"] != "book":
            raise RuntimeError(f"{order['item']!r} is out of stock")
        return {"shipped": order["txn"]}

    order = Saga("isolation_order", app=app).add_step(charge).add_step(ship, no_compensation=True)
    store = backend_for(app)
    print(f"  store: {store!r}")
    try:
        done = order.run(order_id="A-1", amount=10.0, item="book")
        check(done.get(timeout=30)["shipped"] == "txn-A-1", "a saga completes")
        undone = order.run(order_id="A-2", amount=5.0, item="lamp")
        try:
            undone.get(timeout=30)
        except SagaCompensated:
            pass
        else:
            raise CheckFailed("the saga that should compensate did not raise SagaCompensated")
        stored = store.get(undone.saga_id)
        check(
            stored is not None
            and stored.status is SagaStatus.COMPENSATED
            and stored.step(0).status is StepStatus.COMPENSATED
            and ledger == {"txn-A-1": 10.0},
            "a saga compensates (its charge refunded, as stored)",
        )
    finally:
        store.close()


# -- the check ----------------------------------------------------------------------------
def main(kind: str) -> int:
    package, driver = STORES[kind]
    print(f"isolation check: celery-saga-core + the {kind} store, in {sys.prefix}")

    print("1. what can be imported")
    for name in others(kind):
        check(importlib.util.find_spec(name) is None, f"{name} is not installed")
    check(importlib.util.find_spec(package) is not None, f"{package} is installed")

    from celery_saga.backends import installed_schemes

    print(f"  schemes: {', '.join(installed_schemes())}")

    print("2. sagas on the store")
    with STORE_URLS[kind]() as url:
        if url is None:
            return 0
        run_sagas(url)

    print("3. what was imported")
    for name in others(kind):
        loaded = sorted(m for m in sys.modules if m == name or m.startswith(f"{name}."))
        check(not loaded, f"{name} was never imported" + (f" (found {loaded})" if loaded else ""))
    check(driver in sys.modules, f"the store's own driver, {driver}, was used")
    print(f"isolation check passed: {kind}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STORES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(STORES)}")
    store_kind = sys.argv[1]
    try:
        sys.exit(main(store_kind))
    except CheckFailed as failure:
        sys.exit(f"isolation check FAILED ({store_kind}): {failure}")
    except Exception:
        traceback.print_exc()
        sys.exit(f"isolation check FAILED ({store_kind}): the sagas did not run (see above)")
