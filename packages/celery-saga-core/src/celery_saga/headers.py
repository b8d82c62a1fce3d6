"""The saga header every step and compensation message carries, built and parsed here.

It is plain JSON under the message header ``celery_saga``: which saga, which step,
which attempt, whether it is a compensation, the definition hash, and a traced saga's
original trace context. Celery keeps custom headers across retries, so a retried step
is still recognised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from celery_saga.ids import idempotency_key_for, step_task_id, validate_saga_id

HEADER = "celery_saga"
VERSION = 1


@dataclass(frozen=True)
class SagaHeader:
    """What a step message says about its place in a saga."""

    saga_id: str
    saga_name: str
    index: int
    attempt: int
    compensation: bool = False
    definition_hash: str = ""
    queue: str | None = None
    deadline_at: float | None = None
    round_start: int | None = None
    started: bool = False
    run_queue: str | None = None
    #: For the compensation of a superseded attempt's late success: that attempt.
    late: int | None = None
    #: The execution is a child saga: its end is reported to its parent.
    child: bool = False
    #: A traced saga's original trace context (W3C carrier: ``traceparent``, maybe
    #: ``tracestate``), so a worker can link an attempt sent again back to it. Left out of
    #: the hash (a dict has none), so a header stays hashable.
    trace: dict[str, str] | None = field(default=None, hash=False)
    #: A compensation of a saga being reverted (carried for traced sagas only).
    revert: bool = False

    @property
    def task_id(self) -> str:
        """The Celery task id of this attempt."""
        task_id = step_task_id(
            self.saga_id, self.index, self.attempt, compensation=self.compensation
        )
        return task_id if self.late is None else f"{task_id}-late{self.late}"

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and retries of this step; use it to deduplicate effects."""
        return idempotency_key_for(self.saga_id, self.index)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form put on the wire."""
        data: dict[str, Any] = {
            "v": VERSION,
            "id": self.saga_id,
            "saga": self.saga_name,
            "i": self.index,
            "a": self.attempt,
            "c": 1 if self.compensation else 0,
            "h": self.definition_hash,
        }
        if self.queue:
            data["q"] = self.queue
        if self.deadline_at is not None:
            data["dl"] = self.deadline_at
        if self.round_start is not None:
            data["r"] = self.round_start
        if self.started:
            data["g"] = 1
        if self.run_queue:
            data["rq"] = self.run_queue
        if self.late is not None:
            data["l"] = self.late
        if self.child:
            data["p"] = 1
        if self.trace:
            data["t"] = self.trace
        if self.revert:
            data["rv"] = 1
        return data

    @classmethod
    def from_dict(cls, data: Any) -> SagaHeader | None:
        """Parse the wire form; None if it is not a saga header this version understands.

        The saga id is validated here, where it comes off the broker, so a crafted
        header never carries a malformed id to a store (InvalidSagaId is a ValueError).
        """
        if not isinstance(data, dict) or data.get("v") != VERSION:
            return None
        try:
            return cls(
                saga_id=validate_saga_id(data["id"]),
                saga_name=str(data["saga"]),
                index=int(data["i"]),
                attempt=int(data["a"]),
                compensation=bool(data.get("c")),
                definition_hash=str(data.get("h", "")),
                queue=data.get("q") or None,
                deadline_at=float(data["dl"]) if data.get("dl") is not None else None,
                round_start=int(data["r"]) if data.get("r") is not None else None,
                started=bool(data.get("g")),
                run_queue=data.get("rq") or None,
                late=int(data["l"]) if data.get("l") is not None else None,
                child=bool(data.get("p")),
                trace=_carrier(data["t"]) if "t" in data else None,
                revert=bool(data.get("rv")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def deadline_passed(self) -> bool:
        """True when the saga had a deadline and it is over."""
        return self.deadline_at is not None and time.time() > self.deadline_at


#: The most a trace carrier from the broker may hold (W3C allows 512 characters of
#: tracestate); anything larger is dropped rather than passed on.
_CARRIER_MAX = 2048


def _carrier(raw: Any) -> dict[str, str] | None:
    """A trace carrier from the wire: string keys and values only, bounded, or None."""
    if not isinstance(raw, dict):
        return None
    carrier = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
    if not carrier or sum(len(k) + len(v) for k, v in carrier.items()) > _CARRIER_MAX:
        return None
    return carrier


def header_of(request: Any) -> SagaHeader | None:
    """The saga header of a Celery task request, if it has one."""
    if request is None:
        return None
    headers = getattr(request, "headers", None)
    raw = headers.get(HEADER) if isinstance(headers, dict) else None
    if raw is None:
        raw = getattr(request, HEADER, None)
    return SagaHeader.from_dict(raw)


def current_step() -> SagaHeader | None:
    """Inside a task: the saga header of the step being run, or None outside a saga."""
    from celery import current_task

    task = current_task._get_current_object()  # the proxy itself is never None
    if task is None:
        return None
    return header_of(task.request)


def idempotency_key(request: Any = None) -> str | None:
    """The step's idempotency key (``"<saga id>:<step>"``), from `request` or the current task.

    It is the same for every attempt and retry of the step, so a participant can
    use it to make its side effect happen once.
    """
    header = header_of(request) if request is not None else current_step()
    return None if header is None else header.idempotency_key
