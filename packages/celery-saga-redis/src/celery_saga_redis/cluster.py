"""A Redis Cluster's creates and status changes: one-slot scripts, indexes around them.

On a Redis Cluster every script touches one slot (the execution's hash tag), so the
listing indexes, the idempotency key and the children index (other slots) are kept
around the scripts with these rules:

- an index entry is written before the write that makes it true (create: after a
  ``creating`` marker in the execution's slot; status change: before the
  compare-and-set), so an interrupted write leaves an extra entry, never a
  missing one;
- the winner of a status change re-asserts the new entries, removes the old ones,
  then re-reads the status and restores the old entries if the status went back
  to it meanwhile;
- readers check every entry against the execution (`indexes`): a status or name that
  does not match is skipped, and an entry is removed only when neither the execution
  nor its ``creating`` marker exists.

On a standalone server the store's create and status change are single scripts that
do all of this at once (`scripts.CREATE_INDEXED`, `scripts.UPDATE_SAGA`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.commands.core import Script

from celery_saga.backends.base import StoreStats, payload_size
from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus
from celery_saga_redis import layout, scores, scripts
from celery_saga_redis.indexes import Indexes
from celery_saga_redis.keys import Keys

#: Seconds to wait for a create that claimed an idempotency key to finish before
#: taking the key over.
_IDEMPOTENCY_WAIT = 5.0
#: Seconds a create's ``creating`` marker lives: a create takes milliseconds (up to
#: `_IDEMPOTENCY_WAIT` more when it waits for another's); a marker older than this is a
#: killed or frozen create's, and the next create of the id takes the id over.
_CREATING_TTL = 15
#: Times a create starts again after losing its mark before it gives up.
_CREATE_ATTEMPTS = 10
#: (name, created_at, idempotency key) of this many executions are remembered for
#: status changes.
_HEADS_CACHED = 4096

#: An execution's saga name, created_at and idempotency key (all immutable).
Head = tuple[str, float, str | None]


class ClusterWrites:
    """The cluster paths of one store: `client`, `keys`, `stats` and `indexes` are the
    store's, `ttl` its retention, `get` its read and `update_saga` its UPDATE_SAGA."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        stats: StoreStats,
        indexes: Indexes,
        ttl: int,
        get: Callable[[str], SagaExecution | None],
        update_saga: Script,
    ) -> None:
        self.client = client
        self.keys = keys
        self.stats = stats
        self.indexes = indexes
        self.ttl = ttl
        self._get = get
        self._update_saga = update_saga
        self._begin_create = client.register_script(scripts.BEGIN_CREATE)
        self._create = client.register_script(scripts.CREATE)
        self._claim = client.register_script(scripts.CLAIM)
        self._tidied = client.register_script(scripts.TIDIED)
        self._lock = threading.Lock()
        #: saga id -> its `Head`, read before a status change.
        self._heads: dict[str, Head] = {}

    def create(self, execution: SagaExecution, fields: list[str]) -> tuple[SagaExecution, bool]:
        """Mark, claim the idempotency key, index, write: each step within one slot.

        A create that loses its mark before it writes (it took longer than the mark
        lives, and another create took the id over) starts again.
        """
        saga_id = execution.saga_id
        for _ in range(_CREATE_ATTEMPTS):
            token = uuid.uuid4().hex
            if not self._mark(saga_id, token):
                return self._existing(execution), False
            if execution.idempotency_key is not None:
                existing = self._claim_idempotency_key(execution.idempotency_key, saga_id)
                if existing is not None:
                    self.stats.add()
                    self.client.delete(self.keys.creating(saga_id))
                    return existing, False
            self.indexes.add(execution)
            written = self._write_created(execution, fields, token)
            if written == 1:
                return execution, True
            if written == 0:
                return self._existing(execution), False
        raise RuntimeError(f"saga id {saga_id}: the create kept losing its mark to other creates")

    def _mark(self, saga_id: str, token: str) -> bool:
        """Mark `saga_id` as being created by `token`; False if the execution exists.

        Another create's mark is waited for: it goes when that create writes the
        execution, or expires (`_CREATING_TTL`) when that create was killed.
        """
        keys = [self.keys.execution(saga_id), self.keys.creating(saga_id)]
        deadline, delay = time.monotonic() + 2 * _CREATING_TTL, 0.005
        while True:
            self.stats.add()
            marked = self._begin_create(keys=keys, args=[token, _CREATING_TTL])
            if marked != -1:
                return bool(marked)
            if time.monotonic() > deadline:
                raise RuntimeError(f"saga id {saga_id}: other creates keep it marked")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _existing(self, execution: SagaExecution) -> SagaExecution:
        """The execution that holds `execution`'s id, if it is the same create's (its
        idempotency key names it); otherwise the id is taken: ValueError."""
        key = execution.idempotency_key
        if key is not None:
            self.stats.add()
            if self.client.get(self.keys.idempotency(key)) == execution.saga_id:
                found = self._get(execution.saga_id)
                if found is not None:
                    return found
        raise ValueError(f"saga id {execution.saga_id} already exists")

    def _write_created(self, execution: SagaExecution, fields: list[str], token: str) -> int:
        """Write the marked execution: 1, or 0 if the id exists, or -1 if the mark is
        no longer this create's."""
        saga_id = execution.saga_id
        self.stats.add(1, payload_size(*fields))
        keys = [self.keys.execution(saga_id), self.keys.creating(saga_id)]
        written = int(self._create(keys=keys, args=[token, *fields]))
        if written == 1:
            self.remember(execution)
        return written

    def _claim_idempotency_key(self, key: str, saga_id: str) -> SagaExecution | None:
        """Claim `key` for `saga_id` (None), or return the execution that holds it.

        An owner whose execution and ``creating`` marker are both missing is gone
        (expired, deleted, or its create failed) and is taken over at once; one still
        being created is waited for, and taken over if it does not finish in time.
        """
        idem = self.keys.idempotency(key)
        gone_owner, watched = "", ""
        deadline, delay = 0.0, 0.005
        while True:
            self.stats.add(1, payload_size(saga_id))
            owner = self._claim(keys=[idem], args=[saga_id, gone_owner])
            if owner == saga_id:
                return None
            found = self._get(owner)
            if found is not None:
                return found
            if owner != watched:
                watched, deadline, delay = owner, time.monotonic() + _IDEMPOTENCY_WAIT, 0.005
            self.stats.add()
            pending = self.client.exists(self.keys.creating(owner), self.keys.execution(owner))
            if not pending or time.monotonic() > deadline:
                gone_owner = owner
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def remember(self, execution: SagaExecution) -> None:
        head = (execution.saga_name, execution.created_at, execution.idempotency_key)
        self._keep_head(execution.saga_id, head)

    def forget(self, saga_id: str) -> None:
        """Drop a deleted execution's head (its id may name another execution later)."""
        with self._lock:
            self._heads.pop(saga_id, None)

    def _keep_head(self, saga_id: str, head: Head) -> None:
        with self._lock:
            if saga_id not in self._heads and len(self._heads) >= _HEADS_CACHED:
                self._heads.pop(next(iter(self._heads)))
            self._heads[saga_id] = head

    def _head(self, saga_id: str) -> Head | None:
        """The execution's saga name, created_at and idempotency key (all immutable)."""
        head = self._heads.get(saga_id)
        if head is None:
            self.stats.add()
            raw, created_at = self.client.hmget(self.keys.execution(saga_id), "h", "h:created_at")
            if raw is None or created_at is None:
                return None
            header = json.loads(raw)
            head = (header["saga_name"], json.loads(created_at), header.get("idempotency_key"))
            self._keep_head(saga_id, head)
        return head

    def update_status(
        self, saga_id: str, new_status: str, lead: list[Any], pairs: list[Any]
    ) -> bool:
        """A status change on a cluster: index first, compare-and-set, tidy up, announce."""
        key = self.keys.execution(saga_id)
        channel = lead[3]
        lead = [*lead[:3], ""]  # announced once the indexes are tidy, not by the CAS
        for _ in range(2):
            head = self._head(saga_id)
            if head is None:
                return False
            name, created_at, idempotency_key = head
            score = scores.score(created_at)
            self.stats.add()
            pipe = self.client.pipeline(transaction=False)
            for index in self.keys.indexes_for(name, new_status):
                pipe.zadd(index, {saga_id: score})
            pipe.execute()
            self.stats.add(1, payload_size(*pairs))
            applied, old, new = self._update_saga(
                keys=[key, self.keys.counters(saga_id)],
                args=[*lead, "", layout.dumps(created_at), *pairs],
            )
            if applied != -1:
                break
            with self._lock:  # the id now names another execution: read it afresh
                self._heads.pop(saga_id, None)
        else:
            return False
        if applied == 1 and old != new:
            finished = _finished(new)
            self.stats.add()
            pipe = self.client.pipeline(transaction=False)
            for index in self.keys.indexes_for(name, new):
                pipe.zadd(index, {saga_id: score})  # a racing tidy-up may have removed it
            for index in self.keys.indexes_for(name, old):
                pipe.zrem(index, saga_id)
            if finished != _finished(old):
                self._follow_expiry(pipe, saga_id, idempotency_key, finished)
            pipe.execute()
            self.stats.add()
            raw = self._tidied(keys=[key], args=[channel if finished else "", new])
            now_status = None if raw is None else json.loads(raw)
            if now_status == old:  # it went back meanwhile
                self.stats.add()
                pipe = self.client.pipeline(transaction=False)
                for index in self.keys.indexes_for(name, old):
                    pipe.zadd(index, {saga_id: score})
                pipe.execute()
            if now_status is not None and _finished(now_status) != finished:
                # A change the other way raced this one's expiry: follow the status now.
                self.stats.add()
                pipe = self.client.pipeline(transaction=False)
                self._follow_expiry(pipe, saga_id, idempotency_key, _finished(now_status))
                pipe.execute()
        return bool(applied == 1)

    def _follow_expiry(
        self, pipe: Any, saga_id: str, idempotency_key: str | None, finished: bool
    ) -> None:
        """On a cluster: the keys outside the execution's slot take or lose its expiry.

        Its idempotency key (if it still names it) and the index of its children, in
        `pipe`; on a standalone server the update_saga script does this itself.
        """
        if not self.ttl:
            return
        children = self.keys.index_parent(saga_id)
        if finished:
            pipe.expire(children, self.ttl)
        else:
            pipe.persist(children)
        if idempotency_key is not None:
            key = self.keys.idempotency(idempotency_key)
            seconds = self.ttl if finished else 0
            pipe.execute_command("EVAL", scripts.FOLLOW, 1, key, saga_id, seconds)

    def pipeline_scripts(
        self, script: Script, calls: list[tuple[str, list[Any]]], *, by_body: bool
    ) -> list[Any]:
        """Run `script` once per (key, args) in one cluster pipeline; return the replies.

        By SHA (EVALSHA), unless `by_body`: then by body (EVAL, which also caches it on
        every node it reaches). Calls that meet a node without the script (NOSCRIPT:
        a new primary, a flushed cache) go again by body, in one more exchange.
        """
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                key, args = calls[i]
                command, body = ("EVAL", script.script) if by_body else ("EVALSHA", script.sha)
                pipe.execute_command(command, body, 1, key, *args)
            if attempt:
                self.stats.add()
            results = pipe.execute(raise_on_error=False)
            again: list[int] = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError) and not by_body:
                    again.append(i)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if not again:
                break
            todo, by_body = again, True
        return replies


def _finished(status: str) -> bool:
    return SagaStatus(status) in TERMINAL_STATUSES
