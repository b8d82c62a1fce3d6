"""The FastAPI example (examples/fastapi_app) end to end, as its docstring runs it.

A real ``celery -A orders worker`` process and a real ``uvicorn main:app`` server, both
started in the example's folder on the Redis broker and a Redis store of this test's
own; the test talks to the server over HTTP only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aio_support import broker_url, delete_queue
from support import IN_CI, REDIS_URL, STORE_DB, drop_prefix, free_ports, poll, require

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"

try:
    import fastapi  # noqa: F401
    import httpx
    import uvicorn  # noqa: F401
except ImportError as exc:  # the redis cells of `nox -s tests` install them
    if IN_CI:
        raise
    pytest.skip(
        f"the FastAPI example needs fastapi, uvicorn and httpx ({exc})", allow_module_level=True
    )

pytestmark = pytest.mark.slow


class _Process:
    """A child process of the example, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.logfile = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=str(EXAMPLE),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        self._log.flush()
        return self.logfile.read_text(errors="replace")[-3000:]

    def check(self, what: str) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{what} exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()


@dataclass
class Server:
    url: str
    worker: _Process
    web: _Process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example's worker and web server, on this module's queue and store."""
    require(REDIS_URL, 6379, "Redis")
    tag = uuid.uuid4().hex[:10]
    prefix, queue = f"fastapi-{tag}:", f"fastapi-{tag}"
    env = {
        **os.environ,
        "ORDERS_BROKER_URL": broker_url(),
        "ORDERS_SAGA_BACKEND": f"{REDIS_URL}/{STORE_DB}?prefix={prefix}",
        "ORDERS_QUEUE": queue,
    }
    logs = tmp_path_factory.mktemp("fastapi")
    (port,) = free_ports(1)
    worker = _Process(
        [sys.executable, "-m", "celery", "-A", "orders", "worker", "-P", "prefork", "-c", "2",
         "-l", "warning", "-n", f"fastapi-{tag}@%h",
         "--without-mingle", "--without-gossip", "--without-heartbeat"],
        env,
        logs / "worker.log",
    )  # fmt: skip
    web = _Process(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
        env,
        logs / "uvicorn.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            worker.check("the celery worker")
            web.check("uvicorn")
            try:
                return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll(up, 60, pytest.fail, "uvicorn to serve the example")
        yield Server(url, worker, web)
    finally:
        web.stop()
        worker.stop()
        delete_queue(queue)
        drop_prefix(REDIS_URL, STORE_DB, prefix)


def _order(order_id: str, **changes: object) -> dict[str, object]:
    return {"order_id": order_id, "sku": "book", "quantity": 1, "amount": 20.0, **changes}


def test_an_order_completes_and_its_progress_streams_in_order(server: Server) -> None:
    """POST /orders answers with the saga's output once it completed (awaited with
    `aget`); GET /orders/{id} gives its status; GET /orders/{id}/progress streams its
    updates as JSON lines, each step done in plan order and the end last."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        reply = http.post("/orders", json=_order("A-1"), params={"wait": 45})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["status"] == "completed"
        assert body["output"]["confirmation"] == "order A-1 is on its way"
        assert body["output"]["reserved"] == 1 and body["output"]["transaction_id"]
        saga_id = body["saga_id"]

        status = http.get(f"/orders/{saga_id}").json()
        assert status["status"] == "completed"
        assert [s["status"] for s in status["steps"]] == ["success"] * 3

        with http.stream("GET", f"/orders/{saga_id}/progress") as stream:
            assert stream.headers["content-type"].startswith("application/x-ndjson")
            updates = [json.loads(line) for line in stream.iter_lines() if line]
        # The saga had finished: each step as it ended, in plan order, then the end.
        assert [(u["step"]["index"], u["step"]["status"]) for u in updates[:-1]] == [
            (0, "success"),
            (1, "success"),
            (2, "success"),
        ]
        assert updates[-1] == {"saga_id": saga_id, "status": "completed", "step": None}

        again = http.post("/orders", json=_order("A-1"), params={"wait": 45})
        assert again.json()["saga_id"] == saga_id  # one saga per order id


def test_a_declined_card_is_compensated(server: Server) -> None:
    """An amount over the card limit fails the charge for good: the reservation is undone
    and POST /orders answers 409 with the compensation."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        reply = http.post("/orders", json=_order("B-1", amount=5000.0), params={"wait": 45})
        assert reply.status_code == 409, reply.text
        body = reply.json()
        assert body["status"] == "compensated"
        assert "card declined for 5000.0" in body["error"]
        status = http.get(f"/orders/{body['saga_id']}").json()
        assert [s["status"] for s in status["steps"]] == ["compensated", "failed", "pending"]


def test_an_order_not_done_in_time_is_accepted_and_its_progress_followed(server: Server) -> None:
    """With ``wait=0`` POST /orders answers 202 at once, pointing at the progress stream,
    which then follows the saga until it ends: each step done in plan order, the end last."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        reply = http.post("/orders", json=_order("C-1"), params={"wait": 0})
        assert reply.status_code == 202, reply.text
        body = reply.json()
        assert body["progress"] == f"/orders/{body['saga_id']}/progress"
        with http.stream("GET", body["progress"]) as stream:
            updates = [json.loads(line) for line in stream.iter_lines() if line]
        assert updates[-1] == {"saga_id": body["saga_id"], "status": "completed", "step": None}
        done = [
            u["step"]["index"] for u in updates if u["step"] and u["step"]["status"] == "success"
        ]
        assert done == [0, 1, 2]


def test_many_orders_at_once(server: Server) -> None:
    """40 orders posted at once over HTTP are all served by the one server process."""

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=90) as http:
            return list(
                await asyncio.gather(
                    *(
                        http.post("/orders", json=_order(f"D-{i}"), params={"wait": 60})
                        for i in range(40)
                    )
                )
            )

    replies = asyncio.run(post_all())
    assert [r.status_code for r in replies] == [200] * 40, [r.text for r in replies][:3]
    assert len({r.json()["saga_id"] for r in replies}) == 40


def test_errors_say_what_is_wrong(server: Server) -> None:
    """A malformed saga id is a 400 that says so; an unknown one a 404."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        bad = http.get("/orders/not a saga id")
        assert bad.status_code == 400 and "saga id" in bad.json()["detail"]
        unknown = http.get(f"/orders/{uuid.uuid4()}")
        assert unknown.status_code == 404
