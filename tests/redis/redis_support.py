"""Classes the Redis tests share (importable: test modules must not import a conftest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_saga.models import SagaExecution


@dataclass(frozen=True)
class TlsRedis:
    """A redis-server that only speaks TLS, and the CA that signed its certificate."""

    port: int
    ca: Path

    def url(self, query: str = "") -> str:
        tls = f"ssl_cert_reqs=required&ssl_ca_certs={self.ca}"
        return f"rediss://127.0.0.1:{self.port}/0?{tls}" + (f"&{query}" if query else "")


@dataclass(frozen=True)
class AclUser:
    """A user allowed only the keys and channels under `prefix`."""

    port: int
    name: str
    password: str
    prefix: str

    def url(self, password: str | None = None, db: int = 0) -> str:
        secret = self.password if password is None else password
        return f"redis://{self.name}:{secret}@127.0.0.1:{self.port}/{db}?prefix={self.prefix}"


#: Step fields the layout before celery-saga-redis 0.5 kept apart from the step's object.
PREVIOUS_RAW_FIELDS = (
    "output",
    "compensation_data",
    "late",
    "lease_owner",
    "lease_expires_at",
    "sent_at",
    "history",
)


def previous_layout(execution: SagaExecution) -> dict[str, str]:
    """The hash fields of `execution` as the store wrote them before its current layout.

    The header with every field (nulls too), each step one JSON object with long names,
    and user data, leases and late successes in ``s:<i>:<name>`` fields. A record an
    upgrade finds in Redis, to check the store reads it and writes it on.
    """
    from celery_saga_redis.layout import raw

    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    header = execution.header_dict()
    head = {
        k: header[k]
        for k in ("saga_id", "saga_name", "idempotency_key", "definition_hash", "queue", "schema")
    }
    head.update((k, header[k]) for k in ("parent_id", "parent_step") if header[k] is not None)
    fields = {"h": dumps(head)}
    for name, value in header.items():
        if name not in head and name not in ("parent_id", "parent_step") and value is not None:
            fields[f"h:{name}"] = dumps(value)
    for step in execution.steps:
        data = step.to_dict()
        if data["kind"] == "task":
            del data["kind"]
        for name in PREVIOUS_RAW_FIELDS:
            value = data.pop(name)
            if value is not None:
                fields[f"s:{step.index}:{name}"] = raw(name, value)
        fields[f"s:{step.index}"] = dumps({k: v for k, v in data.items() if v is not None})
    return fields
