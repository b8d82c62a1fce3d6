"""`RedisSagaBackend`: the saga state store on Redis (standalone or cluster).

One hash per execution holds the execution fields (``h:*``), each step's fields
(``s:<i>:*``, one JSON value per field, so a step write touches only that step),
and counters (``c:*``). Compare-and-set runs in Lua on that one key. Listing uses
sorted sets per status and saga name; completion waits use pub/sub.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from celery_saga.backends.base import (
    Page,
    SagaBackend,
    StepExpect,
    StepWrite,
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
from celery_saga_redis import scripts
from celery_saga_redis.keys import Keys

#: Query parameters of the URL that configure this store (the rest go to redis-py).
URL_OPTIONS = ("prefix", "ttl", "cluster")
#: Execution fields kept in the immutable header blob ``h``.
HEADER_FIELDS = ("saga_id", "saga_name", "idempotency_key", "definition_hash", "queue", "schema")
#: Step fields kept apart from the step blob: user data, stored verbatim.
PAYLOAD_FIELDS = ("output", "compensation_data")
_IDEMPOTENCY_WAIT = 5.0


def _dumps(value: Any) -> str:
    return json.dumps(plain_value(value), separators=(",", ":"))


def _statuses(values: Collection[Any] | None) -> str:
    return "" if values is None else " ".join(sorted(plain_value(v) for v in values))


def _opt(value: int | None) -> str:
    return "" if value is None else str(int(value))


class RedisSagaBackend(SagaBackend):
    """Saga state in Redis.

    ``RedisSagaBackend(url="redis://localhost:6379/0")`` or
    ``RedisSagaBackend(redis_client=client)``. `prefix` namespaces every key;
    `ttl` (seconds) expires finished executions; ``cluster=True`` (or
    ``?cluster=true`` in the URL) talks to a Redis Cluster.
    """

    schemes = ("redis", "rediss")

    def __init__(
        self,
        redis_client: Any = None,
        url: str | None = None,
        *,
        prefix: str = "saga:",
        ttl: int | None = None,
        cluster: bool = False,
        **client_options: Any,
    ) -> None:
        if redis_client is None and url is None:
            raise ValueError("RedisSagaBackend needs url='redis://...' or redis_client=...")
        if redis_client is None:
            assert url is not None
            url, options = _split_url(url)
            prefix = options.get("prefix", prefix)
            ttl = int(options["ttl"]) if options.get("ttl") else ttl
            cluster = cluster or options.get("cluster", "").lower() in ("1", "true", "yes")
            client_options.setdefault("decode_responses", True)
            if cluster:
                redis_client = redis.cluster.RedisCluster.from_url(url, **client_options)
            else:
                redis_client = redis.Redis.from_url(url, **client_options)
        self.client = redis_client
        self.keys = Keys(prefix)
        self.cluster = bool(cluster) or isinstance(redis_client, redis.cluster.RedisCluster)
        self.ttl = int(ttl) if ttl else 0
        self._url = url
        self._create = redis_client.register_script(scripts.CREATE)
        self._create_indexed = redis_client.register_script(scripts.CREATE_INDEXED)
        self._update_step = redis_client.register_script(scripts.UPDATE_STEP)
        self._update_saga = redis_client.register_script(scripts.UPDATE_SAGA)
        self._delete_finished = redis_client.register_script(scripts.DELETE_FINISHED)
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisSagaBackend:
        """``redis://[user:password@]host:port/db?prefix=saga:&ttl=86400&cluster=false``."""
        return cls(url=url, **options)

    def __repr__(self) -> str:
        where = _redact(self._url) if self._url else "client"
        return f"<RedisSagaBackend {where} prefix={self.keys.prefix!r}>"

    # -- encoding ------------------------------------------------------------------------------
    @staticmethod
    def _fields(execution: SagaExecution) -> list[str]:
        """The hash fields of a new execution (see scripts.py for the layout)."""
        header = execution.header_dict()
        fields = ["h", _dumps({k: header[k] for k in HEADER_FIELDS})]
        for name, value in header.items():
            if name not in HEADER_FIELDS and value is not None:
                fields += [f"h:{name}", _dumps(value)]
        for step in execution.steps:
            data = step.to_dict()
            for name in PAYLOAD_FIELDS:
                value = data.pop(name)
                if value is not None:
                    fields += [f"s:{step.index}:{name}", _dumps(value)]
            fields += [f"s:{step.index}", _dumps({k: v for k, v in data.items() if v is not None})]
        return fields

    @staticmethod
    def _decode(raw: Mapping[str, str] | list[str]) -> SagaExecution | None:
        if isinstance(raw, list):  # HGETALL as returned inside a script reply
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        if not raw or "h:status" not in raw:
            return None
        header: dict[str, Any] = json.loads(raw["h"])
        steps: dict[int, dict[str, Any]] = {}
        payloads: list[tuple[int, str, str]] = []
        for field, value in raw.items():
            if field[0] == "s":
                _, index, *name = field.split(":", 2)
                if name:
                    payloads.append((int(index), name[0], value))
                else:
                    steps[int(index)] = json.loads(value)
            elif field[0] == "h" and len(field) > 1:
                header[field[2:]] = json.loads(value)
        for index, name, value in payloads:
            steps[index][name] = json.loads(value)
        header["steps"] = [steps[i] for i in sorted(steps)]
        return SagaExecution.from_dict(header)

    # -- create and read ----------------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        fields = self._fields(execution)
        key = execution.idempotency_key
        hash_key = self.keys.execution(execution.saga_id)
        if not self.cluster:
            self.stats.add(1, payload_size(*fields))
            idem = self.keys.idempotency(key) if key is not None else ""
            reply = self._create_indexed(
                keys=[hash_key, idem],
                args=[
                    self.keys.index_prefix,
                    execution.saga_name,
                    execution.status.value,
                    repr(execution.created_at),
                    execution.saga_id,
                    *fields,
                ],
            )
            if reply == 1:
                return execution, True
            if reply == 0:
                raise ValueError(f"saga id {execution.saga_id} already exists")
            assert key is not None
            existing = self._await_idempotent(key)
            if existing is None:  # claimed by a creator that never wrote: take it over
                self.stats.add()
                self.client.set(idem, execution.saga_id)
                return self.create(execution)
            return existing, False
        # Cluster: the idempotency key, the execution and the indexes live in different
        # slots. Claim the key first; index before writing so no entry is ever missing.
        if key is not None:
            self.stats.add(1, payload_size(execution.saga_id))
            claimed = self.client.set(self.keys.idempotency(key), execution.saga_id, nx=True)
            if not claimed:
                existing = self._await_idempotent(key)
                if existing is not None:
                    return existing, False
                self.stats.add()
                self.client.set(self.keys.idempotency(key), execution.saga_id)
        self._reindex(
            execution.saga_id, execution.saga_name, execution.status.value, execution.created_at
        )
        self.stats.add(1, payload_size(*fields))
        if not self._create(keys=[hash_key], args=fields):
            raise ValueError(f"saga id {execution.saga_id} already exists")
        return execution, True

    def _await_idempotent(self, key: str) -> SagaExecution | None:
        deadline = time.monotonic() + _IDEMPOTENCY_WAIT
        delay = 0.005
        while True:
            saga_id = self.client.get(self.keys.idempotency(key))
            if saga_id:
                found = self.get(saga_id)
                if found is not None:
                    return found
            if time.monotonic() > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def get(self, saga_id: str) -> SagaExecution | None:
        self.stats.add()
        return self._decode(self.client.hgetall(self.keys.execution(saga_id)))

    def find_by_idempotency_key(self, key: str) -> SagaExecution | None:
        self.stats.add()
        saga_id = self.client.get(self.keys.idempotency(key))
        return self.get(saga_id) if saga_id else None

    # -- compare-and-set ---------------------------------------------------------------------------
    def update_saga(
        self,
        saga_id: str,
        changes: Mapping[str, Any],
        *,
        expect_status: Collection[SagaStatus] | None = None,
    ) -> bool:
        check_saga_changes(changes)
        pairs: list[Any] = []
        for name, value in changes.items():
            pairs += [name, _dumps(value)]
        key = self.keys.execution(saga_id)
        lead = [_dumps(now()), _statuses(expect_status), self.ttl, self.keys.done_channel(saga_id)]
        if not self.cluster or "status" not in changes:
            self.stats.add(1, payload_size(*pairs))
            index_prefix = "" if self.cluster else self.keys.index_prefix
            applied, _, _ = self._update_saga(keys=[key], args=[*lead, index_prefix, *pairs])
            return bool(applied)
        # Cluster: index under the new status first, so a crash between the two
        # leaves an extra entry (readers verify it), never a missing one.
        self.stats.add()
        head, created_at = self.client.hmget(key, "h", "h:created_at")
        if head is None:
            return False
        name, created_at = json.loads(head)["saga_name"], json.loads(created_at)
        new_status = plain_value(changes["status"])
        self.stats.add()
        pipe = self.client.pipeline(transaction=False)
        for index in self.keys.indexes_for(name, new_status):
            pipe.zadd(index, {saga_id: created_at})
        pipe.execute()
        self.stats.add(1, payload_size(*pairs))
        applied, old, new = self._update_saga(keys=[key], args=[*lead, "", *pairs])
        if applied and old != new:
            self.stats.add()
            pipe = self.client.pipeline(transaction=False)
            for index in self.keys.indexes_for(name, old):
                pipe.zrem(index, saga_id)
            pipe.execute()
        return bool(applied)

    def update_step(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> StepWrite:
        return self.update_step_and_get(saga_id, index, changes, expect=expect, count_in=count_in)[
            0
        ]

    def update_step_and_get(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
        get_at: int | None = None,
    ) -> tuple[StepWrite, SagaExecution | None]:
        """One script: compare-and-set the step, and read the execution if `get_at` is hit."""
        check_step_changes(changes)
        e = expect or StepExpect()
        args: list[Any] = [
            index,
            _dumps(now()),
            _statuses(e.status),
            _opt(e.attempt),
            _opt(e.attempt_at_most),
            _statuses(e.saga_status),
            _opt(e.comp_attempt),
            _opt(e.comp_attempt_at_most),
            count_in or "",
            _opt(get_at),
        ]
        for name, value in changes.items():
            args += [name, _dumps(value)]
        self.stats.add(1, payload_size(*args[10:]))
        try:
            reply = self._update_step(keys=[self.keys.execution(saga_id)], args=args)
        except redis.ResponseError as exc:
            if "NOSAGA" in str(exc) or "NOSTEP" in str(exc):
                raise KeyError(f"no step {index} in saga {saga_id}") from None
            raise
        applied, status, attempt, comp_attempt, saga_status, count, everything = (
            list(reply) + [None] * 7
        )[:7]
        write = StepWrite(
            applied=bool(applied),
            status=StepStatus(status),
            attempt=int(attempt),
            saga_status=SagaStatus(saga_status),
            count=int(count) if count is not None else None,
            comp_attempt=int(comp_attempt),
        )
        return write, self._decode(everything) if everything else None

    # -- indexes -----------------------------------------------------------------------------
    def _reindex(self, saga_id: str, name: str, status: str, created_at: float) -> None:
        self.stats.add()
        pipe = self.client.pipeline(transaction=False)
        for index in (
            self.keys.index_all(),
            self.keys.index_name(name),
            *self.keys.indexes_for(name, status),
        ):
            pipe.zadd(index, {saga_id: created_at})
        pipe.execute()

    def _index_for(self, status: SagaStatus | None, name: str | None) -> str:
        if status is not None and name is not None:
            return self.keys.index_name_status(name, status.value)
        if status is not None:
            return self.keys.index_status(status.value)
        if name is not None:
            return self.keys.index_name(name)
        return self.keys.index_all()

    def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        created_before: float | None = None,
        created_after: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        wanted = normalize_status(status)
        check_limit(limit)
        index = self._index_for(wanted, name)
        position = decode_cursor(cursor) if cursor else None
        high: Any = "+inf" if created_before is None else f"({created_before!r}"
        if position is not None and (created_before is None or position[0] < created_before):
            high = repr(position[0])  # inclusive: ties on the score are split by id below
        low: Any = "-inf" if created_after is None else f"({created_after!r}"
        items: list[SagaSummary] = []
        gone: list[str] = []
        offset, chunk = 0, limit + 1
        while len(items) <= limit:
            rows = self.client.zrevrangebyscore(
                index, high, low, start=offset, num=chunk, withscores=True
            )
            offset += len(rows)
            if position is not None:
                rows_after = [(sid, score) for sid, score in rows if (score, sid) < position]
            else:
                rows_after = rows
            found, missing = self._summaries(rows_after, wanted, name)
            items.extend(found)
            gone.extend(missing)
            if len(rows) < chunk:
                break
            chunk = min(chunk * 2, 1000)
        if gone:
            self.client.zrem(index, *gone)  # expired or purged executions
        page = items[:limit]
        next_cursor = None
        if len(items) > limit:
            last = page[-1]
            next_cursor = encode_cursor(last.created_at, last.saga_id)
        return Page(page, next_cursor)

    _SUMMARY_FIELDS = ("h", "h:status", "h:created_at", "h:updated_at", "h:finished_at", "h:error")

    def _summaries(
        self, rows: Iterable[tuple[str, float]], status: SagaStatus | None, name: str | None
    ) -> tuple[list[SagaSummary], list[str]]:
        rows = list(rows)
        if not rows:
            return [], []
        pipe = self.client.pipeline(transaction=False)
        for saga_id, _ in rows:
            pipe.hmget(self.keys.execution(saga_id), *self._SUMMARY_FIELDS)
        found: list[SagaSummary] = []
        gone: list[str] = []
        for (saga_id, _), values in zip(rows, pipe.execute(), strict=True):
            if values[0] is None:
                gone.append(saga_id)
                continue
            data = json.loads(values[0])
            for field, value in zip(self._SUMMARY_FIELDS[1:], values[1:], strict=True):
                data[field[2:]] = None if value is None else json.loads(value)
            summary = SagaSummary.from_dict(data)
            if status is not None and summary.status is not status:
                continue  # an entry left by a status change in flight: readers verify
            if name is not None and summary.saga_name != name:
                continue
            found.append(summary)
        return found, gone

    def delete(self, saga_id: str) -> bool:
        execution = self.get(saga_id)
        if execution is None:
            return False
        result = self._delete_finished(keys=[self.keys.execution(saga_id)], args=[""])
        if result == -1:
            raise ValueError(
                f"saga {saga_id} is {execution.status.value}: only finished executions can be "
                "deleted (cancel it first, or wait for it to finish)"
            )
        self._forget(execution)
        return bool(result)

    def _forget(self, execution: SagaExecution) -> None:
        pipe = self.client.pipeline(transaction=False)
        saga_id, name = execution.saga_id, execution.saga_name
        pipe.zrem(self.keys.index_all(), saga_id)
        pipe.zrem(self.keys.index_name(name), saga_id)
        for status in SagaStatus:
            for index in self.keys.indexes_for(name, status.value):
                pipe.zrem(index, saga_id)
        if execution.idempotency_key:
            pipe.delete(self.keys.idempotency(execution.idempotency_key))
        pipe.execute()

    def purge(self, finished_before: float) -> int:
        removed = 0
        for status in TERMINAL_STATUSES:
            index = self.keys.index_status(status.value)
            # finished_at >= created_at, so nothing created after the cutoff qualifies.
            start = 0
            while True:
                ids = self.client.zrangebyscore(
                    index, "-inf", finished_before, start=start, num=500
                )
                if not ids:
                    break
                kept = 0
                for saga_id in ids:
                    execution = self.get(saga_id)
                    if execution is None:
                        self.client.zrem(index, saga_id)
                        continue
                    done = self._delete_finished(
                        keys=[self.keys.execution(saga_id)], args=[repr(finished_before)]
                    )
                    if done == 1:
                        self._forget(execution)
                        removed += 1
                    else:
                        kept += 1
                start += kept
        return removed

    # -- waiting -----------------------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Subscribe to the execution's completion channel, then check, then wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.done_channel(saga_id))
            while True:
                execution = self.get(saga_id)
                if execution is not None and execution.status in TERMINAL_STATUSES:
                    return execution
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                pubsub.get_message(timeout=min(left, 5.0) if left is not None else 5.0)
        finally:
            pubsub.close()

    def close(self) -> None:
        self.client.close()


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in URL_OPTIONS}
    rest = [(k, v) for k, v in query if k not in URL_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(rest))), ours


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
