"""The sorted sets that list executions: `Indexes` writes, reads and sweeps them.

Every execution has an entry, scored by its creation time (`scores`), in the index of its
status and in that of its saga name and status together (and in its parent's, for a
child saga); the saga names are kept in a set of their own. A listing without a status
merges the indexes of every status (`merged`): the layout before this one also kept an
index of every execution and one per saga name, which cost every create two writes;
`sweep` and `remove` still tidy those where an earlier version left them.
A standalone create and status change move the entries in their own scripts; on a
cluster the store writes them around its one-slot scripts (`backend`'s rules), so a
reader checks every entry against the execution: a status or name that does not match
is skipped, and an entry is removed only when neither the execution nor its
``creating`` marker exists. Entries of expired executions are removed by the listings
that meet them and by `sweep`. Entries scored by the layout before this one (seconds)
are rescored before an index is read (`scaled`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from celery_saga.backends.base import Page, StoreStats
from celery_saga.models import TERMINAL_STATUSES, SagaExecution, SagaStatus, SagaSummary
from celery_saga_redis import merged, scores, scripts
from celery_saga_redis.keys import Keys
from celery_saga_redis.merged import Row

#: The execution hash fields a listing reads for each summary.
SUMMARY_FIELDS = ("h", "h:status", "h:created_at", "h:updated_at", "h:finished_at", "h:error")
#: Index entries read per round trip when `sweep` looks for those of expired executions.
SWEEP_CHUNK = 500
#: Entries of the layout before this one rescored per call (`scripts.RESCORE`).
RESCORE_CHUNK = 1000


class Indexes:
    """The listing indexes of one store (`client`, `keys`; `cluster`: a Redis Cluster,
    where an execution found missing may be one being created)."""

    def __init__(self, client: Any, keys: Keys, cluster: bool, stats: StoreStats) -> None:
        self.client = client
        self.keys = keys
        self.cluster = cluster
        self.stats = stats
        self._rescore = client.register_script(scripts.RESCORE)

    def scaled(self, index: str) -> str:
        """`index`, once no entry of it is scored in seconds (the layout before this one:
        a worker of an earlier version may still be adding such entries)."""
        if _in_seconds(self.client.zrange(index, 0, 0, withscores=True)):
            self._rescale(index)
        return index

    def _rescale(self, index: str) -> None:
        while self._rescore(keys=[index], args=[RESCORE_CHUNK, scores.FLOOR]) == RESCORE_CHUNK:
            pass

    def _read(
        self, reads: Mapping[str, int], high: Any, low: Any, chunk: int, first: bool
    ) -> dict[str, list[Row]]:
        """`chunk` rows of each index of `reads` (index: offset), newest first, in one round
        trip; on a listing's `first` read, with the check of `scaled` (each index read
        again after rescoring, which a store of this version rarely needs)."""
        pipe = self.client.pipeline(transaction=False)
        for index, offset in reads.items():
            if first:
                pipe.zrange(index, 0, 0, withscores=True)
            pipe.zrevrangebyscore(index, high, low, start=offset, num=chunk, withscores=True)
        replies = iter(pipe.execute())
        rows: dict[str, list[Row]] = {}
        for index, offset in reads.items():
            if first and _in_seconds(next(replies)):
                next(replies)
                self._rescale(index)
                got = self.client.zrevrangebyscore(
                    index, high, low, start=offset, num=chunk, withscores=True
                )
            else:
                got = next(replies)
            rows[index] = list(got)
        return rows

    def add(self, execution: SagaExecution) -> None:
        """Write a new execution's index entries (a cluster create, before the write)."""
        name, status = execution.saga_name, execution.status.value
        indexes = list(self.keys.indexes_for(name, status))
        if execution.parent_id is not None:
            indexes.append(self.keys.index_parent(execution.parent_id))
        self.stats.add()
        pipe = self.client.pipeline(transaction=False)
        for index in indexes:
            pipe.zadd(index, {execution.saga_id: scores.score(execution.created_at)})
        pipe.sadd(self.keys.index_names(), name)
        pipe.execute()

    def remove(self, execution: SagaExecution) -> None:
        """Remove a deleted execution's entries from every index, and its idempotency key."""
        pipe = self.client.pipeline(transaction=False)
        saga_id, name = execution.saga_id, execution.saga_name
        pipe.zrem(self.keys.index_all(), saga_id)
        pipe.zrem(self.keys.index_name(name), saga_id)
        for status in SagaStatus:
            for index in self.keys.indexes_for(name, status.value):
                pipe.zrem(index, saga_id)
        if execution.parent_id is not None:
            pipe.zrem(self.keys.index_parent(execution.parent_id), saga_id)
        if execution.idempotency_key:
            pipe.delete(self.keys.idempotency(execution.idempotency_key))
        pipe.execute()

    def sources(
        self, status: SagaStatus | None, name: str | None, parent_id: str | None
    ) -> list[str]:
        """The indexes a listing reads, merged; filters they do not cover are checked per
        entry.

        The children of one execution are few, so their index serves every listing by
        parent, the status and name filters applied to what it holds. A listing without
        a status reads the index of every status (of its saga name, if given).
        """
        if parent_id is not None:
            return [self.keys.index_parent(parent_id)]
        if status is not None and name is not None:
            return [self.keys.index_name_status(name, status.value)]
        if status is not None:
            return [self.keys.index_status(status.value)]
        if name is not None:
            return [self.keys.index_name_status(name, s.value) for s in SagaStatus]
        return [self.keys.index_status(s.value) for s in SagaStatus]

    def page(
        self,
        status: SagaStatus | None,
        name: str | None,
        parent_id: str | None,
        created_before: float | None,
        created_after: float | None,
        limit: int,
        position: tuple[float, str] | None,
    ) -> Page:
        """One page of `SagaBackend.list`, newest first, after `position` (a cursor's
        (created_at, saga id)) if given."""
        sources = self.sources(status, name, parent_id)
        # Bounds to the microsecond, inclusive; the exact ones are checked per summary.
        high: Any = "+inf" if created_before is None else scores.score(created_before)
        if position is not None and (created_before is None or position[0] < created_before):
            high = scores.score(position[0])  # ties on the score are split by id below
        low: Any = "-inf" if created_after is None else scores.score(created_after)
        after = None if position is None else (scores.score(position[0]), position[1])
        items: list[SagaSummary] = []
        gone: dict[str, list[str]] = {}
        buffers: dict[str, list[Row]] = {index: [] for index in sources}
        offsets = dict.fromkeys(sources, 0)
        more = set(sources)  # the indexes with rows not read yet
        seen: set[str] = set()  # an entry in two status indexes (a cluster's change) once
        chunk, first = limit + 1, True
        while len(items) <= limit and (more or any(buffers.values())):
            # Read again only the indexes with rows left whose rows read so far are used up.
            reads = {i: offsets[i] for i in sources if i in more and not buffers[i]}
            if reads:
                for index, rows in self._read(reads, high, low, chunk, first).items():
                    offsets[index] += len(rows)
                    buffers[index] += rows
                    if len(rows) < chunk:
                        more.discard(index)
                first, chunk = False, min(chunk * 2, 1000)
            came_from: dict[str, list[str]] = {}
            rows = []
            for index, (saga_id, score) in merged.safe(buffers, more):
                came_from.setdefault(saga_id, []).append(index)
                if saga_id in seen or (after is not None and (score, saga_id) >= after):
                    continue
                seen.add(saga_id)
                rows.append((saga_id, score))
            found, missing = self.summaries(rows, status, name, parent_id)
            items.extend(s for s in found if _within(s.created_at, created_before, created_after))
            for saga_id in missing:
                for index in came_from[saga_id]:
                    gone.setdefault(index, []).append(saga_id)
        for index, ids in gone.items():
            self.client.zrem(index, *ids)  # expired or purged executions
        return Page.of(items, limit)

    def summaries(
        self,
        rows: Iterable[tuple[str, float]],
        status: SagaStatus | None,
        name: str | None,
        parent_id: str | None = None,
    ) -> tuple[list[SagaSummary], list[str]]:
        """The summaries of the executions of index `rows` that match the filters, and
        the ids of those that are gone."""
        rows = list(rows)
        if not rows:
            return [], []
        pipe = self.client.pipeline(transaction=False)
        for saga_id, _ in rows:
            pipe.hmget(self.keys.execution(saga_id), *SUMMARY_FIELDS)
        found: list[SagaSummary] = []
        missing: list[str] = []
        for (saga_id, _), values in zip(rows, pipe.execute(), strict=True):
            if values[0] is None:
                missing.append(saga_id)
                continue
            data = json.loads(values[0])
            data["saga_id"] = saga_id
            for field, value in zip(SUMMARY_FIELDS[1:], values[1:], strict=True):
                data[field[2:]] = None if value is None else json.loads(value)
            summary = SagaSummary.from_dict(data)
            if status is not None and summary.status is not status:
                continue  # an entry left by a status change in flight: readers verify
            if name is not None and summary.saga_name != name:
                continue
            if parent_id is not None and summary.parent_id != parent_id:
                continue  # the id now names another execution
            found.append(summary)
        return found, self.gone(missing)

    def gone(self, saga_ids: list[str]) -> list[str]:
        """Of executions found missing, those that are gone rather than being created."""
        if not self.cluster or not saga_ids:
            return saga_ids  # a standalone create writes the execution with its entries
        pipe = self.client.pipeline(transaction=False)
        for saga_id in saga_ids:
            # One command on one slot: the marker is cleared by the write that
            # creates the execution, so "neither exists" cannot race a create (one
            # whose marker expired writes nothing: it starts again and re-indexes).
            pipe.exists(self.keys.creating(saga_id), self.keys.execution(saga_id))
        return [saga_id for saga_id, n in zip(saga_ids, pipe.execute(), strict=True) if not n]

    def sweep(self, created_before: float) -> None:
        """Remove the index entries, created before the cutoff, of executions that are gone.

        Expired executions leave their entries behind (a sorted set member cannot
        expire): the listings that meet one remove it, and this removes the rest from
        the indexes of every execution and of every saga name (`Keys.index_names`).
        """
        names = sorted(self.client.smembers(self.keys.index_names()))
        # The indexes of every execution and of every name: the layout before this one.
        indexes = [self.keys.index_all()]
        indexes += [self.keys.index_status(s.value) for s in TERMINAL_STATUSES]
        for name in names:
            indexes.append(self.keys.index_name(name))
            indexes += [self.keys.index_name_status(name, s.value) for s in TERMINAL_STATUSES]
        cutoff = scores.score(created_before)
        for index in indexes:
            start = 0
            self.scaled(index)
            while True:
                ids = self.client.zrangebyscore(index, "-inf", cutoff, start=start, num=SWEEP_CHUNK)
                if not ids:
                    break
                pipe = self.client.pipeline(transaction=False)
                for saga_id in ids:
                    pipe.exists(self.keys.execution(saga_id))
                missing = [sid for sid, n in zip(ids, pipe.execute(), strict=True) if not n]
                gone = self.gone(missing)
                if gone:
                    self.client.zrem(index, *gone)
                start += len(ids) - len(gone)


def _in_seconds(lowest: list[tuple[str, float]]) -> bool:
    """Whether an index's lowest entry (ZRANGE 0 0 WITHSCORES) is scored in seconds."""
    return bool(lowest) and lowest[0][1] < scores.FLOOR


def _within(created_at: float, before: float | None, after: float | None) -> bool:
    """Whether a creation time is inside a listing's exclusive bounds."""
    return (before is None or created_at < before) and (after is None or created_at > after)
