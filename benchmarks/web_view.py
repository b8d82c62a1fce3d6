"""W9: the web view's pages, served by uvicorn over a store of N stored executions.

For each store (Redis, PostgreSQL), `prepare` readies what the pages show:

- the N stored executions (`web_seed`: kept between runs, made again when missing);
- one real 50-step execution (``bench.steps50``) and one real compensated one
  (``bench.compensated``), run by a Celery worker on that store, which then stops;
- the web view, ``celery -A bench_app saga web`` (`processes.WebServer`).

Its `Page`s are the list page (first page), the list filtered by status and by name,
the second page (the first page's "next page" link, the store's cursor) and the
50-step execution's page. Each is checked once (status 200, 50 rows of the right
status or name, 50 steps) before anything is timed. `timed` sends a page's requests
in a row through one HTTP client (keep-alive, so connections are warm), each timed from
sending it to having read the whole body. `PreparedView.close` stops the servers and
deletes the two real executions, so the store again holds exactly its N executions.
"""

from __future__ import annotations

import contextlib
import functools
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import web_seed
from processes import WebServer, Worker

from celery_saga.backends.registry import backend_from_url
from celery_saga.config import backend_for
from celery_saga.models import SagaStatus

#: The pages W9 times: name -> what it is (the path is made by `_paths`).
PAGES = {
    "list": "list, first page",
    "status": f"list, status={web_seed.STATUS_FILTER}",
    "name": f"list, name={web_seed.NAME_FILTER}",
    "page2": "list, second page (cursor)",
    "execution": "execution page, 50 steps",
}
#: Rows on a list page (the view's default page size), steps of the execution shown.
ROWS = 50
STEPS = 50
#: The sagas run for real on each store (deleted again when W9 ends).
LIVE = ("bench.steps50", "bench.compensated")
_NEXT = re.compile(r'id="next-page" href="([^"]+)"')
_ROW = re.compile(r'<td class="id"><a href="/sagas/')


@dataclass
class Page:
    """One page of one store's web view: a contender of W9's alternation."""

    key: str
    label: str
    store: str
    name: str
    path: str
    server: WebServer
    client: httpx.Client


@dataclass
class PreparedView:
    """The pages of every store, and how each store was seeded and what ran on it."""

    pages: list[Page]
    stores: dict[str, dict[str, Any]]
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        """Stop the servers, delete the real executions, close the clients."""
        self.stack.close()


def run_live(store_url: str, worker: Worker, app_for: Callable[[], Any]) -> dict[str, str]:
    """Run one 50-step and one compensated saga on the worker; their ids by saga name."""
    worker.ready()
    bench = app_for()
    backend = backend_from_url(store_url)
    try:
        started = {
            "bench.steps50": bench.long[STEPS].run(i=0).saga_id,
            "bench.compensated": bench.compensated.run(i=0).saga_id,
        }
        expected = {
            "bench.steps50": SagaStatus.COMPLETED,
            "bench.compensated": SagaStatus.COMPENSATED,
        }
        for name, saga_id in started.items():
            execution = backend.wait(saga_id, timeout=120)
            status = None if execution is None else execution.status
            if status is not expected[name]:
                raise SystemExit(f"W9: {name} {saga_id} ended {status}, not {expected[name]}")
        return started
    finally:
        backend.close()
        backend_for(bench.app).close()  # the producer's store


def _get(page: Page, path: str | None = None) -> httpx.Response:
    response = page.client.get(path or page.path)
    if response.status_code != 200:
        raise SystemExit(
            f"W9: {page.server.url}{path or page.path} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return response


def _paths(first_page: str, steps50: str) -> dict[str, str]:
    """Each page's path; the second page's from the first page's "next page" link."""
    found = _NEXT.search(first_page)
    if found is None:
        raise SystemExit("W9: the first list page has no 'next page' link")
    return {
        "list": "/",
        "status": f"/?status={web_seed.STATUS_FILTER}",
        "name": f"/?name={web_seed.NAME_FILTER}",
        "page2": html.unescape(found.group(1)),
        "execution": f"/sagas/{steps50}",
    }


def check(page: Page, live: dict[str, str]) -> None:
    """The page shows what it should: 50 rows that match its filter, or 50 steps."""
    body = _get(page).text
    problem = None
    rows = len(_ROW.findall(body))
    if page.name == "execution":
        steps = body.count('<tbody class="step"')
        if steps != STEPS or "completed" not in body:
            problem = f"{steps} steps shown, not {STEPS}"
    elif rows != ROWS:
        problem = f"{rows} rows, not {ROWS}"
    elif page.name == "list" and not all(saga_id in body for saga_id in live.values()):
        problem = "the newest executions (the ones just run) are not on the first page"
    elif page.name == "page2" and any(saga_id in body for saga_id in live.values()):
        problem = "the second page repeats the first page's executions"
    elif page.name == "status" and body.count(f">{web_seed.STATUS_FILTER}</span>") != ROWS:
        problem = f"not every row is {web_seed.STATUS_FILTER}"
    elif page.name == "name" and body.count(f"<td>{web_seed.NAME_FILTER}</td>") != ROWS:
        problem = f"not every row is a {web_seed.NAME_FILTER} saga"
    if problem:
        raise SystemExit(f"W9: {page.label} at {page.path}: {problem}")


def timed(page: Page, n: int) -> list[float]:
    """`n` requests of the page in a row: each one's seconds, until its body was read."""
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        _get(page)
        seconds.append(time.perf_counter() - started)
    return seconds


def prepare(
    stores: list[web_seed.WebStore],
    *,
    executions: int,
    reseed: bool,
    worker_for: Callable[[web_seed.WebStore], Worker],
    app_for: Callable[[web_seed.WebStore], Any],
    env: dict[str, str],
    warm_up: int = 5,
) -> PreparedView:
    """Seed each store, run its two real sagas, start its web view, check every page.

    `worker_for` starts a worker on a store (stopped once its sagas ended), `app_for`
    builds the bench app that sends them there; `env` is the servers' environment.
    """
    view = PreparedView([], {})
    try:
        for store in stores:
            left = web_seed.forget(store, LIVE)
            print(f"  W9 {store.kind}: {executions:,} stored executions...", flush=True)
            seeding = web_seed.ensure(store, executions, reseed=reseed)
            made = (
                "kept from an earlier run"
                if seeding["kept"]
                else f"created in {seeding['seconds']:.1f} s by {seeding['processes']} processes"
            )
            print(f"  W9 {store.kind}: {made}", flush=True)
            worker = worker_for(store)
            try:
                live = run_live(store.url, worker, functools.partial(app_for, store))
            except BaseException:
                worker.stop(keep_log=True)
                print(f"  W9 {store.kind}: the worker's log is {worker.log.name}", flush=True)
                raise
            worker.stop()
            view.stack.callback(_delete, store.url, list(live.values()))
            server = WebServer(store.kind, store.url, env)
            view.stack.callback(server.stop)
            client = httpx.Client(base_url=server.ready().url, timeout=60)
            view.stack.callback(client.close)
            first = Page("", "", store.kind, "list", "/", server, client)
            paths = _paths(_get(first).text, live["bench.steps50"])
            for name, what in PAGES.items():
                key, label = f"{store.kind}:{name}", f"{store.kind}: {what}"
                page = Page(key, label, store.kind, name, paths[name], server, client)
                check(page, live)
                timed(page, warm_up)
                view.pages.append(page)
            view.stores[store.kind] = {
                "url": store.url,
                "seeding": seeding,
                "left_by_an_earlier_run": left,
                "live": live,
                "paths": paths,
            }
    except BaseException:
        view.close()
        raise
    return view


def _delete(store_url: str, ids: list[str]) -> None:
    backend = backend_from_url(store_url)
    try:
        for saga_id in ids:
            backend.delete(saga_id)
    finally:
        backend.close()
