"""In-process state store: for tests, the demo, and `task_always_eager`.

Safe under threads (one lock; waiters use a condition). Records are kept as JSON
text, exactly as a server-backed store would keep them, so nothing mutable is
shared with callers. It cannot be shared between processes: use Redis, SQL or
Mongo for workers in separate processes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import urlsplit

from celery_saga.backends.base import (
    Lease,
    Page,
    SagaBackend,
    StepExpect,
    StepWrite,
    check_limit,
    check_saga_changes,
    check_step_changes,
    decode_cursor,
    normalize_status,
    payload_size,
    plain_value,
)
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    SagaSummary,
    StepStatus,
    now,
)


class _Entry:
    __slots__ = ("counters", "header", "steps")

    def __init__(self, header: dict[str, Any], steps: dict[int, dict[str, Any]]) -> None:
        self.header = header
        self.steps = steps
        self.counters: dict[str, int] = {}


class MemorySagaBackend(SagaBackend):
    """A thread-safe store living in this process's memory."""

    schemes = ("memory",)
    _named: ClassVar[dict[str, MemorySagaBackend]] = {}
    _named_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._idempotency: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemorySagaBackend:
        """``memory://`` or ``memory://name``: one shared store per name in this process."""
        parts = urlsplit(url)
        name = (parts.netloc + parts.path).strip("/") or "default"
        with cls._named_lock:
            store = cls._named.get(name)
            if store is None:
                store = cls._named[name] = cls()
            return store

    # -- create and read ----------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        header = json.loads(json.dumps(execution.header_dict()))
        steps = {s.index: json.loads(json.dumps(s.to_dict())) for s in execution.steps}
        self.stats.add(1, payload_size(header, list(steps.values())))
        with self._lock:
            key = execution.idempotency_key
            if key is not None and key in self._idempotency:
                existing = self._entries.get(self._idempotency[key])
                if existing is not None:
                    return self._build(existing), False
            if execution.saga_id in self._entries:
                raise ValueError(f"saga id {execution.saga_id} already exists")
            self._entries[execution.saga_id] = _Entry(header, steps)
            if key is not None:
                self._idempotency[key] = execution.saga_id
            self._changed.notify_all()
        return execution, True

    def get(self, saga_id: str) -> SagaExecution | None:
        self.stats.add()
        with self._lock:
            entry = self._entries.get(saga_id)
            return None if entry is None else self._build(entry)

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        with self._lock:
            saga_id = self._idempotency.get(key)
            entry = None if saga_id is None else self._entries.get(saga_id)
            return None if entry is None else self._build(entry)

    @staticmethod
    def _build(entry: _Entry) -> SagaExecution:
        data = json.loads(json.dumps(entry.header))
        data["steps"] = json.loads(json.dumps(list(entry.steps.values())))
        return SagaExecution.from_dict(data)

    # -- compare-and-set ----------------------------------------------------------------
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        check_saga_changes(changes)
        encoded = {k: json.loads(json.dumps(plain_value(v))) for k, v in changes.items()}
        self.stats.add(1, payload_size(*encoded, *encoded.values()))
        with self._lock:
            entry = self._entries.get(saga_id)
            if entry is None:
                return False
            if expect_status is not None:
                allowed = {SagaStatus(s).value for s in expect_status}
                if entry.header["status"] not in allowed:
                    return False
            entry.header.update(encoded)
            entry.header["updated_at"] = now()
            self._changed.notify_all()
            return True

    def update_step(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> StepWrite:
        check_step_changes(changes)
        encoded = {k: json.loads(json.dumps(plain_value(v))) for k, v in changes.items()}
        self.stats.add(1, payload_size(*encoded, *encoded.values()))
        with self._lock:
            entry = self._entries.get(saga_id)
            if entry is None or index not in entry.steps:
                raise KeyError(f"no step {index} in saga {saga_id}")
            step = entry.steps[index]
            saga_status = SagaStatus(entry.header["status"])
            status = StepStatus(step["status"])
            if expect is not None and expect.refusal(
                status,
                step["attempt"],
                step["comp_attempt"],
                saga_status,
                step.get("lease_owner"),
                step.get("lease_expires_at"),
            ):
                return _refused(step, saga_status)
            step.update(encoded)
            count = None
            if count_in is not None:
                count = entry.counters.get(count_in, 0) + 1
                entry.counters[count_in] = count
                step["seq"] = count
            entry.header["updated_at"] = now()
            return replace(_refused(step, saga_status), applied=True, count=count)

    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        self.stats.add(1, payload_size(expires_at) * len(leases))
        lost: list[Lease] = []
        with self._lock:
            for lease in leases:
                entry = self._entries.get(lease.saga_id)
                step = None if entry is None else entry.steps.get(lease.index)
                if (
                    entry is None
                    or step is None
                    or lease.expect().refusal(
                        StepStatus(step["status"]),
                        step["attempt"],
                        step["comp_attempt"],
                        SagaStatus(entry.header["status"]),
                        step.get("lease_owner"),
                        step.get("lease_expires_at"),
                    )
                ):
                    lost.append(lease)
                    continue
                step["lease_owner"], step["lease_expires_at"] = lease.owner, expires_at
        return lost

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        encoded = json.loads(json.dumps({k: plain_value(v) for k, v in changes.items()}))
        self.stats.add(1, payload_size(encoded))
        with self._lock:
            entry = self._entries.get(saga_id)
            if entry is None or index not in entry.steps:
                raise KeyError(f"no step {index} in saga {saga_id}")
            step = entry.steps[index]
            saga_status = SagaStatus(entry.header["status"])
            late = dict(step.get("late") or {})
            found = late.get(str(attempt))
            if (found is None) != (expect_state is None) or (
                found is not None and found.get("state") != expect_state
            ):
                return _refused(step, saga_status)
            late[str(attempt)] = {**(found or {}), **encoded}
            step["late"] = late
            entry.header["updated_at"] = now()
            return replace(_refused(step, saga_status), applied=True)

    # -- listing and housekeeping ----------------------------------------------------------
    def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        created_before: float | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent_id: str | None = None,
    ) -> Page:
        wanted = normalize_status(status)
        check_limit(limit)
        after = decode_cursor(cursor) if cursor else None
        with self._lock:
            headers = [dict(e.header) for e in self._entries.values()]
        rows = []
        for h in headers:
            if wanted is not None and h["status"] != wanted.value:
                continue
            if name is not None and h["saga_name"] != name:
                continue
            if parent_id is not None and h.get("parent_id") != parent_id:
                continue
            if created_before is not None and h["created_at"] >= created_before:
                continue
            if created_after is not None and h["created_at"] <= created_after:
                continue
            if after is not None and (h["created_at"], h["saga_id"]) >= after:
                continue
            rows.append(h)
        rows.sort(key=lambda h: (h["created_at"], h["saga_id"]), reverse=True)
        return Page.of([SagaSummary.from_dict(h) for h in rows[: limit + 1]], limit)

    def delete(self, saga_id: str) -> bool:
        with self._lock:
            entry = self._entries.get(saga_id)
            if entry is None:
                return False
            if SagaStatus(entry.header["status"]) not in TERMINAL_STATUSES:
                raise ValueError(
                    f"saga {saga_id} is {entry.header['status']}: only finished executions "
                    "can be deleted (cancel it first, or wait for it to finish)"
                )
            self._drop(saga_id, entry)
            return True

    def purge(self, finished_before: float) -> int:
        with self._lock:
            doomed = [
                (saga_id, entry)
                for saga_id, entry in self._entries.items()
                if SagaStatus(entry.header["status"]) in TERMINAL_STATUSES
                and (entry.header.get("finished_at") or entry.header["updated_at"])
                < finished_before
            ]
            for saga_id, entry in doomed:
                self._drop(saga_id, entry)
            return len(doomed)

    def _drop(self, saga_id: str, entry: _Entry) -> None:
        del self._entries[saga_id]
        key = entry.header.get("idempotency_key")
        if key is not None and self._idempotency.get(key) == saga_id:
            del self._idempotency[key]

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Block on a condition variable until the execution is terminal."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                entry = self._entries.get(saga_id)
                if entry is not None and SagaStatus(entry.header["status"]) in TERMINAL_STATUSES:
                    return self._build(entry)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._changed.wait(timeout=left if left is not None else 1.0)

    def clear(self) -> None:
        """Forget every execution (tests use this between cases)."""
        with self._lock:
            self._entries.clear()
            self._idempotency.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _refused(step: dict[str, Any], saga_status: SagaStatus) -> StepWrite:
    """A refused write's report: the state the step is in (`replace` it for an applied one)."""
    return StepWrite(
        False,
        StepStatus(step["status"]),
        step["attempt"],
        saga_status,
        None,
        step["comp_attempt"],
        lease_owner=step.get("lease_owner"),
        lease_expires_at=step.get("lease_expires_at"),
    )
