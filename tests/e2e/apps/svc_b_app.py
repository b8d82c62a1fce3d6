"""A separate service's worker: its own tasks only, no celery-saga, no saga definitions.

The routing test runs it as a worker consuming only its own queue; sagas name its
task by string (``"svc_b.reserve"``), so the calling process never imports this.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

app = Celery("svc_b", broker=os.environ["SAGA_E2E_BROKER"], set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["SAGA_E2E_QUEUE"], broker_connection_retry_on_startup=True
)
_journal = redis.Redis.from_url(os.environ["SAGA_E2E_JOURNAL"], decode_responses=True)
_prefix = os.environ.get("SAGA_E2E_JOURNAL_PREFIX", "journal:")


def _saga_id(task: Any) -> str:
    header = (task.request.headers or {}).get("celery_saga") or {}
    return str(header.get("id", "none"))


@app.task(name="svc_b.reserve", bind=True)
def reserve(self: Any, **kw: Any) -> dict[str, Any]:
    _journal.rpush(f"{_prefix}{_saga_id(self)}", f"svc_b.reserve@{socket.gethostname()}")
    if kw.get("fail") == "svc_b":
        raise RuntimeError("svc_b refused")
    return {"svc_b": f"B-{kw['order_id']}"}


@app.task(name="svc_b.release", bind=True)
def release(self: Any, data: Any) -> None:
    _journal.rpush(f"{_prefix}{_saga_id(self)}", f"svc_b.release:{data['svc_b']}")


@worker_ready.connect
def _announce(**_: Any) -> None:
    url, key = os.environ["SAGA_E2E_READY"].rsplit("|", 1)
    redis.Redis.from_url(url).set(key, socket.gethostname(), ex=3600)
