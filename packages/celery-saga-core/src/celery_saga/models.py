"""The stored shape of a saga execution and its steps: plain, versioned JSON.

Every state store keeps exactly these fields. `to_dict`/`from_dict` are the only
places that build and parse the shape, so a record written by a newer schema is
refused here with an error that says what to do.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, fields
from typing import Any

from celery_saga.errors import CorruptRecordError, SchemaVersionError

#: Version of the stored record shape. Bump it, and teach `from_dict` the old one,
#: whenever a field changes meaning. 2 added composition: REVERTED, parent links
#: (`parent_id`, `parent_step`), `revert_reason`, and the step's `kind` and `child_id`;
#: a version-1 record reads as one with none of them. Fields that only add information
#: and change no meaning (the step's `worker`, `comp_worker` and `history`, the
#: execution's `trace_context`) keep the version: older readers ignore them.
SCHEMA_VERSION = 2


class SagaStatus(str, enum.Enum):
    """Lifecycle of a saga execution."""

    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: A COMPLETED saga whose steps were compensated on request (`SagaResult.revert`).
    REVERTED = "reverted"

    @property
    def is_terminal(self) -> bool:
        """True for the finished statuses, `TERMINAL_STATUSES` (REVERTED included).

        The saga's own run is over, but a finished execution can be taken back to an
        active status (an operator retry of a FAILED saga, the revert of a COMPLETED
        one, also by its parent's compensation); it is unfinished again then.
        """
        return self in TERMINAL_STATUSES


class StepStatus(str, enum.Enum):
    """Lifecycle of one step, its compensation included."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    SKIPPED = "skipped"


#: The finished statuses: stores list, count, delete, purge, expire and announce
#: (`SagaBackend.wait`) all of them alike, and take the set from here.
TERMINAL_STATUSES = frozenset(
    {
        SagaStatus.COMPLETED,
        SagaStatus.COMPENSATED,
        SagaStatus.FAILED,
        SagaStatus.CANCELLED,
        SagaStatus.REVERTED,
    }
)


class StepKind(str, enum.Enum):
    """What carries a step out: a Celery task, the outside world, or a child saga."""

    TASK = "task"
    #: Completed from outside (`SagaResult.complete_step` / `fail_step`, the CLI).
    EXTERNAL = "external"
    #: A child saga: its own execution, linked to this step (`StepRecord.child_id`).
    SAGA = "saga"


ACTIVE_STATUSES = frozenset({SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING})
#: Step statuses that end the forward part of a step (it will not run again).
FINISHED_STEP_STATUSES = frozenset(
    {
        StepStatus.SUCCESS,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)


def now() -> float:
    """Wall-clock time as stored in records (seconds since the epoch, UTC)."""
    return time.time()


@dataclass
class StepRecord:
    """One step of one execution, as stored.

    The first five fields describe the step (copied from the definition so any
    process can show it); the rest change as it runs. Writes to a step touch only
    this record, never the whole execution.
    """

    index: int
    task_name: str
    stage: int
    compensation_task_name: str | None = None
    no_compensation: bool = False
    #: What carries the step out (`StepKind` value); ``task_name`` then names the
    #: task, the external step, or the child saga.
    kind: str = StepKind.TASK.value
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    task_id: str | None = None
    retries: int = 0
    seq: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    compensation_data: Any = None
    error: str | None = None
    comp_attempt: int = 0
    comp_task_id: str | None = None
    comp_started_at: float | None = None
    comp_finished_at: float | None = None
    comp_error: str | None = None
    #: Who runs the current attempt (forward or compensation): ``host/pid/thread/task-id``.
    lease_owner: str | None = None
    #: Until when `lease_owner` holds it; renewed by its worker's heartbeat.
    lease_expires_at: float | None = None
    #: When the current attempt's message was due on the broker (for the queue-wait limit).
    sent_at: float | None = None
    #: How many times recovery sent the current part (forward or compensation) again.
    sends: int = 0
    #: Successes of superseded attempts, by attempt number (see `LATE_STATES`).
    late: dict[str, Any] | None = None
    #: The child execution of a `StepKind.SAGA` step, once started.
    child_id: str | None = None
    #: The worker that ran the current (or last) forward attempt: Celery's worker hostname
    #: (``celery@host``) when known, else ``host/pid``; None while unknown.
    worker: str | None = None
    #: The same for the compensation's current (or last) attempt.
    comp_worker: str | None = None
    #: Attempts that are over and no longer the current one, oldest first (see
    #: `HISTORY_PARTS`, `HISTORY_OUTCOMES`); None while there are none, which is the
    #: common case: one attempt that succeeded keeps no history.
    history: list[dict[str, Any]] | None = None

    # -- compatibility with celery-saga 0.1 ------------------------------------
    @property
    def step_index(self) -> int:
        """Alias of `index` (the name celery-saga 0.1 used)."""
        return self.index

    @property
    def needs_compensation(self) -> bool:
        """Whether this step has done something a compensation must undo."""
        if self.kind == StepKind.SAGA.value:  # the child is compensated as a whole
            return self.status is StepStatus.SUCCESS and not self.no_compensation
        if self.no_compensation or not self.compensation_task_name:
            return False
        if self.status is StepStatus.SUCCESS:
            return True
        return self.status is StepStatus.FAILED and self.compensation_data is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of this step."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Parse the JSON shape; unknown keys from a newer minor writer are ignored.

        A value no celery-saga writes raises `CorruptRecordError`, whatever the store.
        """
        try:
            values = {k: v for k, v in data.items() if k in _STEP_FIELDS}
            values["status"] = StepStatus(values.get("status", StepStatus.PENDING.value))
            values["kind"] = StepKind(values.get("kind", StepKind.TASK.value)).value
            for name in _STEP_INTS & values.keys():
                if not isinstance(values[name], int) or isinstance(values[name], bool):
                    raise TypeError(f"{name} is {values[name]!r}, not an integer")
            history = values.get("history")
            if history is not None and (
                not isinstance(history, list) or not all(isinstance(e, dict) for e in history)
            ):
                raise TypeError(f"history is {history!r}, not a list of attempts")
            return cls(**values)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            where = f"step {data.get('index')!r}" if isinstance(data, dict) else f"step {data!r}"
            raise CorruptRecordError(f"{where}: {exc}") from exc


_STEP_FIELDS = frozenset(f.name for f in fields(StepRecord))
#: Step fields that must hold integers (positions and counters the runtime does sums on).
_STEP_INTS = frozenset({"index", "stage", "attempt", "retries", "comp_attempt", "sends"})

#: States of a late success (an entry of `StepRecord.late`): recorded, then, if the
#: saga compensates, compensating and compensated (or compensation_failed).
LATE_STATES = ("recorded", "compensating", "compensated", "compensation_failed")

#: What a `StepRecord.history` entry is about: the step itself, or its compensation.
HISTORY_PARTS = ("forward", "compensation")
#: How an attempt in `StepRecord.history` ended: ``retried`` (it failed and the step's retry
#: policy sent a new one), ``taken_over`` (recovery gave it up, its lease expired or its
#: message was lost, and sent a new one), ``failed`` (a compensation attempt that failed and
#: was tried again), ``late_success`` (a superseded attempt that succeeded after all).
HISTORY_OUTCOMES = ("failed", "retried", "taken_over", "late_success")

#: Names a backend accepts in `update_step(changes=...)`.
STEP_MUTABLE_FIELDS = frozenset(
    f.name
    for f in fields(StepRecord)
    if f.name
    not in {"index", "task_name", "stage", "compensation_task_name", "no_compensation", "kind"}
)


@dataclass
class SagaExecution:
    """One run of a saga, with its steps."""

    saga_id: str
    saga_name: str
    status: SagaStatus = SagaStatus.PENDING
    input: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    idempotency_key: str | None = None
    definition_hash: str = ""
    queue: str | None = None
    output: Any = None
    error: str | None = None
    failed_step: int | None = None
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    finished_at: float | None = None
    deadline_at: float | None = None
    cancelled_at: float | None = None
    #: The execution whose step started this one (a child saga), and that step's index.
    parent_id: str | None = None
    parent_step: int | None = None
    #: Why a COMPLETED saga is being (or was) reverted; None unless it was.
    revert_reason: str | None = None
    #: The W3C trace context (``{"traceparent": ..., "tracestate": ...}``) of the trace the
    #: saga was started in, stamped at creation when tracing is on, so a recovered or
    #: retried attempt can link back to it; None otherwise.
    trace_context: dict[str, str] | None = None
    schema: int = SCHEMA_VERSION

    # -- compatibility with celery-saga 0.1 ------------------------------------
    @property
    def input_data(self) -> dict[str, Any]:
        """Alias of `input` (the name celery-saga 0.1 used)."""
        return self.input

    @property
    def context(self) -> dict[str, Any]:
        """The saga input merged with every step output, in plan order.

        Transforms are plain callables that live in the saga definition, so this
        view (usable in any process) leaves them out; `SagaResult.context`
        applies them when the definition is registered in the process.
        """
        ctx = dict(self.input)
        for record in sorted(self.steps, key=lambda s: (s.stage, s.index)):
            if isinstance(record.output, dict):
                ctx.update(record.output)
        return ctx

    def step(self, index: int) -> StepRecord:
        """The step record at plan position `index`."""
        for record in self.steps:
            if record.index == index:
                return record
        raise KeyError(f"saga {self.saga_id} has no step {index}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the execution, steps included."""
        data = self.header_dict()
        data["steps"] = [s.to_dict() for s in self.steps]
        return data

    def header_dict(self) -> dict[str, Any]:
        """The JSON shape without steps (what a store keeps apart from them)."""
        data = {name: getattr(self, name) for name in _HEADER_NAMES}
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SagaExecution:
        """Parse the JSON shape, refusing records from a newer schema.

        A value no celery-saga writes raises `CorruptRecordError` naming the saga.
        """
        saga_id = data.get("saga_id") if isinstance(data, dict) else None
        try:
            schema = int(data.get("schema", SCHEMA_VERSION))
            if schema > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"saga record {saga_id!r} has schema version {schema}, but this "
                    f"celery-saga reads versions up to {SCHEMA_VERSION}: upgrade "
                    "celery-saga-core on this machine (the record is left untouched)."
                )
            values = {k: v for k, v in data.items() if k in _SAGA_FIELDS}
            values["status"] = SagaStatus(values.get("status", SagaStatus.PENDING.value))
            values["steps"] = [StepRecord.from_dict(s) for s in data.get("steps", [])]
            values["steps"].sort(key=lambda s: s.index)
            carrier = values.get("trace_context")
            if carrier is not None and not isinstance(carrier, dict):
                raise TypeError(f"trace_context is {carrier!r}, not a dict")
            return cls(**values)
        except CorruptRecordError as exc:  # from a step: name the saga
            raise CorruptRecordError(exc.problem, saga_id) from exc.__cause__
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptRecordError(str(exc), saga_id) from exc


_SAGA_FIELDS = frozenset(f.name for f in fields(SagaExecution))


#: The fields of an execution's header: all but its steps (`SagaExecution.header_dict`).
_HEADER_NAMES = tuple(f.name for f in fields(SagaExecution) if f.name != "steps")


@dataclass(frozen=True)
class SagaSummary:
    """One row of a listing: the execution without its steps."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    created_at: float
    updated_at: float
    finished_at: float | None = None
    idempotency_key: str | None = None
    error: str | None = None
    parent_id: str | None = None

    @classmethod
    def of(cls, execution: SagaExecution) -> SagaSummary:
        """Summarise a full execution."""
        return cls(
            saga_id=execution.saga_id,
            saga_name=execution.saga_name,
            status=execution.status,
            created_at=execution.created_at,
            updated_at=execution.updated_at,
            finished_at=execution.finished_at,
            idempotency_key=execution.idempotency_key,
            error=execution.error,
            parent_id=execution.parent_id,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SagaSummary:
        """Build a summary from the stored header fields."""
        return cls(
            saga_id=data["saga_id"],
            saga_name=data["saga_name"],
            status=SagaStatus(data["status"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            finished_at=None if data.get("finished_at") is None else float(data["finished_at"]),
            idempotency_key=data.get("idempotency_key"),
            error=data.get("error"),
            parent_id=data.get("parent_id"),
        )
