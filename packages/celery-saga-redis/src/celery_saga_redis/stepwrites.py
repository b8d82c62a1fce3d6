"""The step writes of a Redis store: a step's compare-and-set (by a fast script when the
write has the common shape, `fastpath`), with the saga's end in the same call, lease
renewals and late outcomes. These are the calls of `step_scripts`; their ARGV and
replies are `stepcalls`'. `RedisSagaBackend` hands its step writes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from celery_saga.backends.base import (
    Lease,
    StartNext,
    StepExpect,
    StepWrite,
    StoreStats,
    payload_size,
)
from celery_saga.models import SagaExecution, SagaStatus, now
from celery_saga_redis import fastpath, layout, step_scripts, stepcalls
from celery_saga_redis.cluster import ClusterWrites
from celery_saga_redis.fastpath import FastWrite
from celery_saga_redis.keys import Keys

_dumps = layout.dumps
_RUNNING = frozenset({SagaStatus.RUNNING})


class StepWrites:
    """One store object's step writes: its step scripts, registered on its client.

    `packed` says how a hot script is called (`PackedScript` on a standalone client);
    `cluster` is the store's `ClusterWrites` on a Redis Cluster, None on a standalone
    server.
    """

    def __init__(
        self,
        client: Any,
        keys: Keys,
        stats: StoreStats,
        ttl: int,
        cluster: ClusterWrites | None,
        packed: Callable[[Script], Callable[..., Any]],
    ) -> None:
        self.keys, self.stats, self.ttl, self._cluster = keys, stats, ttl, cluster
        self._update_step = client.register_script(step_scripts.UPDATE_STEP)
        self._finish_step = client.register_script(step_scripts.FINISH_STEP)
        self._record_late = client.register_script(step_scripts.RECORD_LATE)
        self._renew = client.register_script(step_scripts.RENEW)
        #: The calls of every step: packed in one go on a standalone client.
        self._update_step_call = packed(self._update_step)
        self._finish_step_call = packed(self._finish_step)
        self._step_fast_call = packed(client.register_script(step_scripts.STEP_FAST))
        self._finish_fast_call = packed(client.register_script(step_scripts.FINISH_FAST))
        #: Whether RENEW ran from this object (a cluster pipeline sends it by body until then).
        self._renew_sent = False

    def write(
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
        e = expect or StepExpect()
        fast = fastpath.plan(saga_id, index, changes, e, count_in, get_at, read, start_next)
        if fast is not None:
            reply = self._fast_script(self._step_fast_call, saga_id, fast)
            if reply:
                return fast.write(reply, changes), None
        args = stepcalls.step_args(index, e, count_in, get_at, read, start_next)
        written = stepcalls.step_changes(args, saga_id, index, changes)
        if start_next is not None:
            for i in start_next.start:
                written += stepcalls.step_changes(args, saga_id, i, start_next.changes.get(i, {}))
        self.stats.add(1, written)
        reply = self._step_script(self._update_step_call, saga_id, index, args)
        write = stepcalls.step_write(reply, changes, count=reply[7], started=reply[9])
        everything = reply[8]
        execution = layout.decode(saga_id, everything) if everything else None
        if execution is not None and self._cluster is not None:
            self._cluster.remember(execution)
        return write, execution

    def finish(
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
        e = expect or StepExpect()
        # Counted as a stage of this step alone: its count is 1, with no counter written.
        start = StartNext.alone(index) if count_in else None
        get_at = 1 if count_in else None
        pairs = stepcalls.saga_pairs(saga_changes)
        lead = stepcalls.saga_update_lead(self.keys, self.ttl, saga_id, _RUNNING)
        finish = [*lead, self.keys.prefix, "", *pairs]
        fast = fastpath.plan(saga_id, index, changes, e, count_in, get_at, False, start)
        if fast is not None:
            fast.args.extend(finish)
            reply = self._fast_script(
                self._finish_fast_call, saga_id, fast, ends=True, more=payload_size(*pairs)
            )
            if reply:
                return fast.write(reply, changes), reply[4] == 1
        args = stepcalls.step_args(index, e, count_in, get_at, False, start)
        written = stepcalls.step_changes(args, saga_id, index, changes)
        args[stepcalls.FINISH_SLOT] = len(finish)
        args += finish
        self.stats.add(1, written + payload_size(*pairs))
        reply = self._step_script(self._finish_step_call, saga_id, index, args)
        return stepcalls.step_write(reply, changes, count=reply[7]), reply[10] == 1

    def _fast_script(
        self,
        call: Callable[..., Any],
        saga_id: str,
        fast: FastWrite,
        ends: bool = False,
        more: int = 0,
    ) -> Any:
        """Run a fast step script: its reply, 0 when the caller must run the general one.
        A write that `ends` the saga deletes the counters too; `more`: the bytes of the
        saga's changes it writes."""
        self.stats.add(1, fast.size + more)
        keys = [self.keys.execution(saga_id)]
        if ends:
            keys.append(self.keys.counters(saga_id))
        return call(keys=keys, args=fast.args)

    def _step_script(
        self, call: Callable[..., Any], saga_id: str, index: int, args: list[Any]
    ) -> list[Any]:
        """Run a step script (UPDATE_STEP or FINISH_STEP): its reply, padded to 11 values."""
        try:
            keys = [self.keys.execution(saga_id), self.keys.counters(saga_id)]
            reply = call(keys=keys, args=args)
        except redis.ResponseError as exc:
            stepcalls.raise_if_missing(exc, saga_id, index)
            raise
        return [*reply, None, None, None, None][:11]

    def renew(self, leases: Sequence[Lease], expires_at: float) -> list[Lease]:
        """Renew every lease in one round trip (see `SagaBackend.renew_leases`).

        On a standalone server one RENEW call takes them all; on a cluster each
        execution lives in a slot of its own, so one call per execution goes out in one
        pipeline (written to every node before any reply is read).
        """
        if not leases:
            return []
        until = _dumps(expires_at)
        groups: dict[str, list[int]] = {}
        for position, lease in enumerate(leases):
            groups.setdefault(self.keys.execution(lease.saga_id), []).append(position)
        owners = [_dumps(lease.owner) for lease in leases]
        written = sum(payload_size(owner, until) for owner in owners)

        def args_of(positions: list[int], key_position: int) -> list[Any]:
            out: list[Any] = []
            for i in positions:
                lease = leases[i]
                attempt = f"c{lease.attempt}" if lease.compensation else str(lease.attempt)
                out += [key_position, lease.index, attempt, owners[i]]
            return out

        lost: list[int] = []
        if self._cluster is None:
            args: list[Any] = [until]
            order: list[int] = []
            for key_position, positions in enumerate(groups.values(), 1):
                args += args_of(positions, key_position)
                order += positions
            self.stats.add(1, written)
            reply = self._renew(keys=list(groups), args=args)
            lost = [order[int(n) - 1] for n in reply]
        else:
            calls = [(key, [until, *args_of(positions, 1)]) for key, positions in groups.items()]
            self.stats.add(1, written)
            by_body = not self._renew_sent
            assert self._cluster is not None
            replies = self._cluster.pipeline_scripts(self._renew, calls, by_body=by_body)
            self._renew_sent = True
            for positions, reply in zip(groups.values(), replies, strict=True):
                lost += [positions[int(n) - 1] for n in reply]
        return [leases[i] for i in sorted(lost)]

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
        pairs: list[Any] = []
        for name, value in changes.items():
            pairs += [str(name), _dumps(value)]
        args = [
            index,
            str(int(attempt)),
            "" if expect_state is None else _dumps(expect_state),
            _dumps(now()),
            *pairs,
        ]
        self.stats.add(1, payload_size(*pairs))
        try:
            reply = self._record_late(keys=[self.keys.execution(saga_id)], args=args)
        except redis.ResponseError as exc:
            stepcalls.raise_if_missing(exc, saga_id, index)
            raise
        return stepcalls.step_write([*reply, None, None][:7])
