"""`RedisSagaBackend`: the saga state store on Redis (standalone or cluster).

One hash per execution holds the execution's header and fields and one JSON object
per step, as layout.py says; a step write rewrites that step's object only, and
compare-and-set runs in Lua on that one key (`step_scripts`, called by `stepwrites`).
Counters of a running execution live in a hash of their own. Listing uses sorted sets
per status and saga name, and one per parent execution for its child sagas
(`indexes`); completion waits use pub/sub, one connection per store object in a
process (listener.py).

Finished executions expire after `ttl` seconds (7 days unless told otherwise; 0 or
``none`` keeps them): the expiry is armed by the write that finishes one, and taken
away by a write that takes it back to an active status. Index entries of expired
executions are removed by the listings that meet them and by `purge`.

On a standalone server, create and status changes are single scripts that also
move the index entries. On a Redis Cluster every script touches one slot (the
execution's hash tag), so creates and status changes keep the indexes around them
(`cluster`, whose docstring gives the rules).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.commands.core import Script

from celery_saga.backends.base import (
    Lease,
    Outcome,
    Page,
    SagaBackend,
    StartNext,
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
from celery_saga.backends.listening import wait_woken, wait_woken_outcome
from celery_saga.backends.urls import parse_flag, parse_seconds, split_options
from celery_saga.models import (
    TERMINAL_STATUSES,
    SagaExecution,
    SagaStatus,
    now,
)
from celery_saga_redis import layout, scores, scripts, stepcalls
from celery_saga_redis.cluster import ClusterWrites
from celery_saga_redis.indexes import Indexes
from celery_saga_redis.keys import Keys
from celery_saga_redis.listener import DoneListener, told
from celery_saga_redis.packed import PackedScript
from celery_saga_redis.stepwrites import StepWrites

#: Query parameters of the URL that configure this store (the rest go to redis-py).
URL_OPTIONS = ("prefix", "ttl", "cluster")
#: Seconds a finished execution is kept when `ttl` is not given: 7 days.
DEFAULT_TTL = 7 * 24 * 3600
#: Spellings of "no expiry" for `ttl`, besides 0.
_NO_TTL = frozenset({"none", "never", "off"})


def _ttl(value: Any) -> int:
    """Seconds of the `ttl` option (None: the default; 0, ``none``: no expiry)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_TTL
    if isinstance(value, str) and value.strip().lower() in _NO_TTL:
        return 0
    seconds = parse_seconds("ttl", value)
    assert seconds is not None
    return math.ceil(seconds)


class RedisSagaBackend(SagaBackend):
    """Saga state in Redis.

    ``RedisSagaBackend(url="redis://localhost:6379/0")`` or
    ``RedisSagaBackend(redis_client=client)``. `prefix` namespaces every key;
    `ttl` (seconds) is how long a finished execution is kept: `DEFAULT_TTL` (7 days)
    unless given, 0 (or ``"none"``) for ever. ``cluster=True`` (or ``?cluster=true``
    in the URL) talks to a Redis Cluster.
    """

    schemes = ("redis", "rediss")

    def __init__(
        self,
        redis_client: Any = None,
        url: str | None = None,
        *,
        prefix: str = "saga:",
        ttl: int | str | None = None,
        cluster: bool = False,
        **client_options: Any,
    ) -> None:
        if redis_client is None and url is None:
            raise ValueError("RedisSagaBackend needs url='redis://...' or redis_client=...")
        if redis_client is None:
            assert url is not None
            url, options = split_options(url, URL_OPTIONS)
            prefix = options.get("prefix", prefix)
            if options.get("ttl"):
                ttl = options["ttl"]  # the URL's wins over the keyword's
            cluster = cluster or bool(parse_flag("cluster", options.get("cluster")))
            client_options.setdefault("decode_responses", True)
            if cluster:
                redis_client = redis.cluster.RedisCluster.from_url(url, **client_options)
            else:
                redis_client = redis.Redis.from_url(url, **client_options)
        self.client = redis_client
        self.keys = Keys(prefix)
        self.cluster = bool(cluster) or isinstance(redis_client, redis.cluster.RedisCluster)
        #: Seconds a finished execution is kept (0: for ever).
        self.ttl = _ttl(ttl)
        self._url = url
        self._create_indexed = redis_client.register_script(scripts.CREATE_INDEXED)
        self._update_saga = redis_client.register_script(scripts.UPDATE_SAGA)
        self._delete_finished = redis_client.register_script(scripts.DELETE_FINISHED)
        #: The calls of every saga: packed in one go on a standalone client (`packed`),
        #: redis-py's own on a cluster.
        self._create_indexed_call = self._packed(self._create_indexed)
        self._update_saga_call = self._packed(self._update_saga)
        #: The saga names this object has added to the set of names (`Keys.index_names`):
        #: the set only grows, so a create of one of them skips the SADD.
        self._named: set[str] = set()
        #: The sorted sets that list executions (`indexes`).
        self._indexes = Indexes(redis_client, self.keys, self.cluster, self.stats)
        #: Creates and status changes on a cluster (`cluster`).
        self._cluster = ClusterWrites(
            redis_client,
            self.keys,
            self.stats,
            self._indexes,
            self.ttl,
            self.get,
            self._update_saga,
        )
        #: The step writes (`stepwrites`).
        self._steps = StepWrites(
            redis_client,
            self.keys,
            self.stats,
            self.ttl,
            self._cluster if self.cluster else None,
            self._packed,
        )
        #: The done-channel subscriptions of every `wait` on this object (made on first use).
        self._listener = DoneListener(lambda: self.client.pubsub(), self.keys.listener_channel)

    def _packed(self, script: Script) -> Callable[..., Any]:
        """How `script` is called: `PackedScript` on a standalone client."""
        return script if self.cluster else PackedScript(self.client, script)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisSagaBackend:
        """``redis://[user:password@]host:port/db?prefix=saga:&ttl=604800&cluster=false``."""
        return cls(url=url, **options)

    def __repr__(self) -> str:
        where = _redact(self._url) if self._url else "client"
        return f"<RedisSagaBackend {where} prefix={self.keys.prefix!r} ttl={self.ttl}>"

    # -- encoding ------------------------------------------------------------------------------
    @staticmethod
    def _fields(execution: SagaExecution) -> list[str]:
        """The hash fields of a new execution (see layout.py)."""
        return layout.encode(execution)

    @staticmethod
    def _decode(saga_id: str, raw: Mapping[str, str] | list[str]) -> SagaExecution | None:
        return layout.decode(saga_id, raw)

    # -- create and read ----------------------------------------------------------------------
    def create(self, execution: SagaExecution) -> tuple[SagaExecution, bool]:
        fields = self._fields(execution)
        if self.cluster:
            return self._cluster.create(execution, fields)
        key = execution.idempotency_key
        hash_key = self.keys.execution(execution.saga_id)
        keys = [hash_key] if key is None else [hash_key, self.keys.idempotency(key)]
        gone_owner = ""
        for _ in range(10):
            self.stats.add(1, payload_size(*fields))
            reply = self._create_indexed_call(
                keys=keys,
                args=[
                    self.keys.index_prefix,
                    execution.saga_name,
                    execution.status.value,
                    scores.score(execution.created_at),
                    execution.saga_id,
                    gone_owner,
                    execution.parent_id or "",
                    "" if execution.saga_name in self._named else "1",
                    "" if execution.parent_id is None else self.keys.execution(execution.parent_id),
                    *fields,
                ],
            )
            if reply == 1:
                self._named.add(execution.saga_name)
                return execution, True
            if reply == 0:
                raise ValueError(f"saga id {execution.saga_id} already exists")
            existing = self.get(reply)
            if existing is not None:
                return existing, False
            # The owner was created atomically with its claim, so it is gone (expired
            # or deleted): take the key over, unless someone else did meanwhile.
            gone_owner = reply
        raise RuntimeError(f"idempotency key {key!r} keeps naming executions that are gone")

    def get(self, saga_id: str) -> SagaExecution | None:
        self.stats.add()
        execution = self._decode(saga_id, self.client.hgetall(self.keys.execution(saga_id)))
        if execution is not None and self.cluster:
            self._cluster.remember(execution)
        return execution

    def get_status(self, saga_id: str) -> SagaStatus | None:
        self.stats.add()
        raw = self.client.hget(self.keys.execution(saga_id), "h:status")
        return None if raw is None else SagaStatus(json.loads(raw))

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
        pairs = stepcalls.saga_pairs(changes)
        key = self.keys.execution(saga_id)
        lead = stepcalls.saga_update_lead(self.keys, self.ttl, saga_id, expect_status)
        if not self.cluster or "status" not in changes:
            self.stats.add(1, payload_size(*pairs))
            prefix = "" if self.cluster else self.keys.prefix
            keys = [key, self.keys.counters(saga_id)]
            applied, _, _ = self._update_saga_call(keys=keys, args=[*lead, prefix, "", *pairs])
            return bool(applied == 1)
        new_status = plain_value(changes["status"])
        return self._cluster.update_status(saga_id, new_status, lead, pairs)

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
        start_next: StartNext | None = None,
        read: bool = True,
    ) -> tuple[StepWrite, SagaExecution | None]:
        """One script: compare-and-set the step; at `get_at`, start the next stage and read."""
        check_step_changes(changes)
        return self._steps.write(
            saga_id,
            index,
            changes,
            expect=expect,
            count_in=count_in,
            get_at=get_at,
            start_next=start_next,
            read=read,
        )

    def update_step_and_finish(
        self,
        saga_id: str,
        index: int,
        changes: Mapping[str, Any],
        saga_changes: Mapping[str, Any],
        *,
        expect: StepExpect | None = None,
        count_in: str | None = None,
    ) -> tuple[StepWrite, bool]:
        """One script on a standalone server: the step's write, then the saga's end (the
        update_saga script's work: indexes, expiry, announcement) if it applied."""
        if self.cluster:  # the status change on a cluster touches several slots
            return super().update_step_and_finish(
                saga_id, index, changes, saga_changes, expect=expect, count_in=count_in
            )
        check_step_changes(changes)
        check_saga_changes(saga_changes)
        return self._steps.finish(
            saga_id, index, changes, saga_changes, expect=expect, count_in=count_in
        )

    # -- leases and late outcomes ----------------------------------------------------------
    def renew_leases(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """Renew every lease in one round trip (see `SagaBackend.renew_leases`).

        On a standalone server one RENEW call takes them all; on a cluster one call per
        execution goes out in one pipeline.
        """
        return self._steps.renew(leases, expires_at)

    def record_late(
        self,
        saga_id: str,
        index: int,
        attempt: int,
        changes: Mapping[str, Any],
        *,
        expect_state: str | None = None,
    ) -> StepWrite:
        """One script: check the entry's state and merge `changes` into it (RECORD_LATE)."""
        return self._steps.record_late(saga_id, index, attempt, changes, expect_state=expect_state)

    # -- listing and housekeeping -------------------------------------------------------------
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
        position = decode_cursor(cursor) if cursor else None
        return self._indexes.page(
            wanted, name, parent_id, created_before, created_after, limit, position
        )

    def delete(self, saga_id: str) -> bool:
        execution = self.get(saga_id)
        if execution is None:
            return False
        keys = [self.keys.execution(saga_id), self.keys.counters(saga_id)]
        result = self._delete_finished(keys=keys, args=[""])
        if result == -1:
            raise ValueError(
                f"saga {saga_id} is {execution.status.value}: only finished executions can be "
                "deleted (cancel it first, or wait for it to finish)"
            )
        self._forget(execution)
        return bool(result)

    def _forget(self, execution: SagaExecution) -> None:
        """Remove a deleted execution's index entries and idempotency key, and its head."""
        self._indexes.remove(execution)
        self._cluster.forget(execution.saga_id)

    def purge(self, finished_before: float) -> int:
        """Delete what finished before the cutoff; sweep out index entries of expired ones.

        The sweep looks at the entries created before the cutoff, or before `ttl` ago if
        that is later (an execution created since cannot have expired).
        """
        removed = 0
        for status in TERMINAL_STATUSES:
            index = self._indexes.scaled(self.keys.index_status(status.value))
            # finished_at >= created_at, so nothing created after the cutoff qualifies.
            start = 0
            while True:
                ids = self.client.zrangebyscore(
                    index, "-inf", scores.score(finished_before), start=start, num=500
                )
                if not ids:
                    break
                kept = 0
                for saga_id in ids:
                    execution = self.get(saga_id)
                    if execution is None:
                        if self._indexes.gone([saga_id]):
                            self.client.zrem(index, saga_id)
                        else:
                            kept += 1  # still being created
                        continue
                    done = self._delete_finished(
                        keys=[self.keys.execution(saga_id), self.keys.counters(saga_id)],
                        args=[repr(finished_before)],
                    )
                    if done == 1:
                        self._forget(execution)
                        removed += 1
                    else:
                        kept += 1
                start += kept
        # An execution created less than `ttl` ago has not expired: it finished after that.
        self._indexes.sweep(max(finished_before, now() - self.ttl) if self.ttl else finished_before)
        return removed

    # -- waiting -----------------------------------------------------------------------------------
    def wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """Subscribe to the execution's completion channel, then check, then wait.

        Every wait on this store object in this process shares one pub/sub connection
        (`DoneListener`). The first read happens once the server has confirmed the
        subscription, so a completion after that read is always announced; the
        execution is read again every few seconds anyway, as a safety net. A read that
        no announcement woke reads the status alone until it is finished. On a
        cluster the connection goes to one node: a PUBLISH reaches every node.
        """
        read, status = self._readers(saga_id)
        channel = self.keys.done_channel(saga_id)
        return wait_woken(read, self._listener, channel, timeout, 5.0, status)

    def wait_outcome(self, saga_id: str, timeout: float | None = None) -> Outcome | None:
        """`wait`, except that a completion whose announcement carries the output (up to
        `keys.OUTPUT_SAID` bytes of it) ends the wait without reading the execution."""
        read, status = self._readers(saga_id)
        channel = self.keys.done_channel(saga_id)
        return wait_woken_outcome(read, self._listener, channel, timeout, 5.0, status, told)

    def _readers(
        self, saga_id: str
    ) -> tuple[Callable[[], SagaExecution | None], Callable[[], SagaStatus | None]]:
        """A wait's reads of the execution: whole, and its status alone."""
        return functools.partial(self.get, saga_id), functools.partial(self.get_status, saga_id)

    async def async_wait(self, saga_id: str, timeout: float | None = None) -> SagaExecution | None:
        """`wait` for asyncio, by redis.asyncio pub/sub on the same done channel.

        One connection per event loop serves every waiter (`celery_saga_redis.aio`);
        reads run in a thread. redis.asyncio is imported on first use only.
        """
        from celery_saga_redis.aio import wait_async

        return await wait_async(self, saga_id, timeout)

    def close(self) -> None:
        self._listener.close()
        self.client.close()


_RUNNING = frozenset({SagaStatus.RUNNING})


def _finished(status: str) -> bool:
    return SagaStatus(status) in TERMINAL_STATUSES


def _terminal(execution: SagaExecution | None) -> bool:
    return execution is not None and execution.status in TERMINAL_STATUSES


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
