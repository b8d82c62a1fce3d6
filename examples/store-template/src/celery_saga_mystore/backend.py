"""`MyStore`: a working, minimal celery-saga state store, to copy and adapt.

The "server" here is a dict guarded by one lock, so every operation is trivially
atomic and the whole store passes the conformance suite. To write a real store,
keep the shape and replace each critical section (``with self._lock:``) by one
atomic request to your server: a transaction, a script, a conditional update. The
contract, operation by operation, is the store specification page of the docs
(docs/store-spec.md); the comments below say what each part must guarantee.

This store lives in one process's memory, so it is not shared between processes
(its tests declare that); a store on a server is.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Collection, Mapping
from typing import Any

from celery_saga.backends import Page, SagaBackend, StepExpect, StepWrite
from celery_saga.backends.helpers import (
    check_limit,
    check_saga_changes,
    check_step_changes,
    decode_cursor,
    encode_cursor,
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

#: Live stores, to reset after a fork (see `_after_fork_in_child`).
_live_stores: weakref.WeakSet[MyStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A Celery prefork child inherits the stores its parent built. It must never use the
    # parent's connections (drop them without closing them: closing would cut the
    # parent's too) nor a lock another thread of the parent held at the fork.
    for store in list(_live_stores):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _copy(value: Any) -> Any:
    """JSON in, JSON out: what a server stores, never an object a caller still holds."""
    return json.loads(json.dumps(value))


def _plain(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Changes as JSON data (statuses given as enum members become their values)."""
    plain: dict[str, Any] = _copy({name: plain_value(value) for name, value in changes.items()})
    return plain


def _report(
    applied: bool, step: dict[str, Any], saga_status: str, count: int | None = None
) -> StepWrite:
    """What a step write returns: the step's state (after the write, if it applied)."""
    return StepWrite(
        applied,
        StepStatus(step["status"]),
        step["attempt"],
        SagaStatus(saga_status),
        count,
        step["comp_attempt"],
        lease_owner=step.get("lease_owner"),
        lease_expires_at=step.get("lease_expires_at"),
    )


class MyStore(SagaBackend):
    """Saga executions in a dict: ``mystore://`` (each URL builds a fresh, empty store)."""

    schemes = ("mystore",)

    def __init__(self, url: str = "mystore://", **options: Any) -> None:
        # Connect lazily (on the first operation), so a store can be configured at
        # import time and a forked child never inherits a live connection.
        self.url = url
        self._lock = threading.Lock()
        self._sagas: dict[str, dict[str, Any]] = {}  # saga id -> header, steps, counters
        self._keys: dict[str, str] = {}  # idempotency key -> saga id
        _live_stores.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MyStore:
        # `options` are the Celery setting `saga_backend_options`; they win over the URL.
        return cls(url, **options)

    def close(self) -> None:
        _live_stores.discard(self)

    # -- create and read -------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        record = {
            "header": _copy(execution.header_dict()),
            "steps": {str(s.index): _copy(s.to_dict()) for s in execution.steps},
            "counters": {},
        }
        self.stats.add(1, payload_size(record))
        with self._lock:  # one atomic request: the idempotency key decides
            key = execution.idempotency_key
            if key is not None and key in self._keys:
                return self._build(self._sagas[self._keys[key]]), False
            if execution.saga_id in self._sagas:
                raise ValueError(f"saga id {execution.saga_id} already exists")
            self._sagas[execution.saga_id] = record
            if key is not None:
                self._keys[key] = execution.saga_id
        return execution, True

    def get(self, saga_id: str) -> SagaExecution | None:
        self.stats.add()
        with self._lock:
            record = self._sagas.get(saga_id)
            return None if record is None else self._build(record)

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        self.stats.add()
        with self._lock:
            saga_id = self._keys.get(key)
            return None if saga_id is None else self._build(self._sagas[saga_id])

    @staticmethod
    def _build(record: dict[str, Any]) -> SagaExecution:
        # `from_dict` refuses records of a newer schema and fills the defaults of older ones.
        data = _copy(record["header"])
        data["steps"] = _copy(list(record["steps"].values()))
        return SagaExecution.from_dict(data)

    # -- compare-and-set -------------------------------------------------------------
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        check_saga_changes(changes)  # ValueError for a field update_saga may not set
        values = _plain(changes)
        self.stats.add(1, payload_size(values))
        with self._lock:
            record = self._sagas.get(saga_id)
            if record is None:
                return False
            header = record["header"]
            if expect_status is not None and header["status"] not in {
                SagaStatus(s).value for s in expect_status
            }:
                return False
            header.update(values, updated_at=now())
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
        check_step_changes(changes)  # ValueError for a field update_step may not set
        values = _plain(changes)
        self.stats.add(1, payload_size(values))
        with self._lock:  # read, check and write the one step: atomic
            record = self._sagas.get(saga_id)
            step = None if record is None else record["steps"].get(str(index))
            if record is None or step is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            status = record["header"]["status"]
            if expect is not None and expect.refusal(
                StepStatus(step["status"]),
                step["attempt"],
                step["comp_attempt"],
                SagaStatus(status),
                step.get("lease_owner"),
                step.get("lease_expires_at"),
            ):
                return _report(False, step, status)
            step.update(values)
            count = None
            if count_in is not None:  # the counter moves in the same write, or not at all
                count = step["seq"] = record["counters"].get(count_in, 0) + 1
                record["counters"][count_in] = count
            record["header"]["updated_at"] = now()
            return _report(True, step, status, count)

    # `update_step_and_get`, `renew_leases` and `take_over` are the base class's, built
    # on `update_step`; a store on a server overrides them to make one round trip each.

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        values = _plain(changes)
        self.stats.add(1, payload_size(values))
        with self._lock:
            record = self._sagas.get(saga_id)
            step = None if record is None else record["steps"].get(str(index))
            if record is None or step is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            status = record["header"]["status"]
            late = step.get("late") or {}
            entry = late.get(str(attempt))  # entries are keyed by the attempt, as a string
            if (entry is None) != (expect_state is None) or (
                entry is not None and entry.get("state") != expect_state
            ):
                return _report(False, step, status)
            step["late"] = {**late, str(attempt): {**(entry or {}), **values}}
            record["header"]["updated_at"] = now()
            return _report(True, step, status)

    # -- listing and housekeeping ----------------------------------------------------
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
        wanted = normalize_status(status)  # ValueError for an unknown status
        check_limit(limit)  # ValueError outside 1..1000
        after = decode_cursor(cursor) if cursor else None  # ValueError for a foreign one
        self.stats.add()
        with self._lock:  # a server answers this from an index, never by a scan
            headers = [_copy(r["header"]) for r in self._sagas.values()]
        rows = sorted(
            (
                h
                for h in headers
                if (wanted is None or h["status"] == wanted.value)
                and (name is None or h["saga_name"] == name)
                and (parent_id is None or h.get("parent_id") == parent_id)
                and (created_before is None or h["created_at"] < created_before)
                and (created_after is None or h["created_at"] > created_after)
                and (after is None or (h["created_at"], h["saga_id"]) < after)
            ),
            key=lambda h: (h["created_at"], h["saga_id"]),
            reverse=True,
        )
        page = rows[:limit]
        more = len(rows) > limit
        next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["saga_id"]) if more else None
        return Page([SagaSummary.from_dict(h) for h in page], next_cursor)

    def delete(self, saga_id: str) -> bool:
        self.stats.add()
        with self._lock:
            record = self._sagas.get(saga_id)
            if record is None:
                return False
            if SagaStatus(record["header"]["status"]) not in TERMINAL_STATUSES:
                raise ValueError(
                    f"saga {saga_id} is {record['header']['status']}: only finished executions "
                    "can be deleted (cancel it first, or wait for it to finish)"
                )
            self._drop(saga_id)
            return True

    def purge(self, finished_before: float) -> int:
        self.stats.add()
        with self._lock:
            doomed = [
                saga_id
                for saga_id, record in self._sagas.items()
                if SagaStatus(record["header"]["status"]) in TERMINAL_STATUSES
                and (record["header"]["finished_at"] or record["header"]["updated_at"])
                < finished_before
            ]
            for saga_id in doomed:
                self._drop(saga_id)
            return len(doomed)

    def _drop(self, saga_id: str) -> None:
        """Remove an execution with its steps, counters and idempotency key (lock held)."""
        record = self._sagas.pop(saga_id)
        key = record["header"].get("idempotency_key")
        if key is not None and self._keys.get(key) == saga_id:
            del self._keys[key]

    # `wait` is the base class's: it polls `get`. Override it where your server can
    # notify (pub/sub, LISTEN/NOTIFY, change streams).
