"""What every database does alike, and the step write that locks, decides, then writes.

`SQLDialect` holds one store's statements for one database, each built once (per
*shape* where the statement depends on which fields are written: `cached`) and run
with bound parameters, so a step write builds no SQLAlchemy construct. Its step write
(`write_step`) is one write transaction:

1. one ``SELECT ... FOR UPDATE`` locks the execution row, then the step rows the write
   needs (the step, the stage members whose success the next stage waits for, the next
   stage's steps), and reads their state and the counter's value;
2. the expectations are checked in Python with `StepExpect.refusal`, and whether the
   next stage starts is decided from the same state (`StepRequest.may_start`);
3. the dialect's `apply` writes the counter (none for a stage of one step:
   `StepRequest.alone`), the step rows (the step and the started
   ones in one ``UPDATE``) and the execution's ``updated_at``.

MySQL/MariaDB write the step rows and the execution in one multi-table ``UPDATE``;
SQLite folds the read into the write of ``updated_at`` (`lock_step`), rolled back when
the write is refused.

Every writer of a saga locks its execution row first, so writers of one saga queue
there and never deadlock on each other. PostgreSQL does the same in one statement
(`celery_saga_sql.dialects.postgresql`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Select,
    bindparam,
    case,
    insert,
    select,
    update,
)

from celery_saga.backends.base import Lease, StepWrite, payload_size
from celery_saga.models import SagaExecution, SagaStatus, StepStatus, now
from celery_saga_sql.codec import STEP_STATE, RowCodec, late_entries, report
from celery_saga_sql.schema import Tables
from celery_saga_sql.stepwrites import StepRequest, start_params
from celery_saga_sql.transactions import Runner, Tx

T = TypeVar("T")


def key_in(column: Any, names: Sequence[str]) -> ColumnElement[bool]:
    """``column = :name`` for one name, ``column IN (:a, :b, ...)`` for several."""
    binds = [bindparam(name, type_=column.type) for name in names]
    if len(binds) == 1:
        found: ColumnElement[bool] = column == binds[0]
        return found
    return column.in_(binds)  # type: ignore[no-any-return]


class SQLDialect:
    """One store's statements and writes on one database; subclasses say what differs."""

    #: The `StoreURL.backend` names this class serves.
    backends: ClassVar[tuple[str, ...]] = ()
    #: Exchanges a BEGIN costs (psycopg and our SQLite setup send it on its own).
    begin_trips: ClassVar[int] = 1
    #: Whether `renew` takes any number of leases in one statement.
    renews_any_number: ClassVar[bool] = False
    #: Whether `lock_step` writes the execution's ``updated_at`` (undone on a refusal).
    touches_when_locking: ClassVar[bool] = False

    def __init__(self, tables: Tables, engine: Engine) -> None:
        self.tables = tables
        self.engine = engine
        self.codec = RowCodec(tables)
        self._cache: dict[Hashable, Any] = {}
        e, s = tables.executions, tables.steps
        joined = (
            select(
                *[c.label(f"e_{c.name}") for c in e.columns],
                *[s.c[name].label(f"s_{name}") for name in self.codec.step_cols],
            )
            .select_from(e.outerjoin(s, s.c.saga_id == e.c.saga_id))
            .order_by(s.c.idx)
        )
        self.get_by_id: Select[Any] = joined.where(e.c.saga_id == bindparam("saga_id"))
        self.get_by_key: Select[Any] = joined.where(e.c.idempotency_key == bindparam("key"))
        self.get_status: Select[Any] = select(e.c.status).where(e.c.saga_id == bindparam("saga_id"))
        self.touch = (
            update(e)
            .where(e.c.saga_id == bindparam("sid", type_=e.c.saga_id.type))
            .values(updated_at=bindparam("stamp", type_=e.c.updated_at.type))
        )

    def read_execution(self, conn: Connection, saga_id: str) -> SagaExecution | None:
        """The execution `saga_id` with its steps (one statement), or None."""
        return self.codec.decode(conn.execute(self.get_by_id, {"saga_id": saga_id}).all())

    def read_status(self, conn: Connection, saga_id: str) -> SagaStatus | None:
        """The status of execution `saga_id` alone (one statement), or None."""
        status = conn.execute(self.get_status, {"saga_id": saga_id}).scalar()
        return None if status is None else SagaStatus(status)

    def cached(self, key: Hashable, build: Callable[[], T]) -> T:
        """The statement of shape `key`, built by `build` the first time it is asked for."""
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = build()
        return found

    # -- create ------------------------------------------------------------------------------
    def create(self, run: Runner, row: dict[str, Any], step_rows: list[dict[str, Any]]) -> None:
        """Insert the execution and its steps in one transaction (the steps in one
        executemany, which the drivers batch into one exchange)."""
        executions, steps = self.tables.executions, self.tables.steps

        def insert_all(tx: Tx) -> None:
            tx.execute(insert(executions), row, written=payload_size(row))
            if step_rows:
                tx.execute(insert(steps), step_rows, written=payload_size(step_rows))

        run.write(insert_all)

    # -- update_saga --------------------------------------------------------------------------
    def saga_update(self, names: tuple[str, ...], expected: int | None) -> Any:
        """``UPDATE executions SET <names> WHERE saga_id = :sid [AND status IN (...)]``."""

        def build() -> Any:
            e = self.tables.executions
            stmt = update(e).where(e.c.saga_id == bindparam("sid", type_=e.c.saga_id.type))
            stmt = stmt.values(
                {name: bindparam(f"v_{name}", type_=e.c[name].type) for name in names}
            )
            if expected is not None:
                stmt = stmt.where(key_in(e.c.status, [f"x_{i}" for i in range(expected)]))
            return stmt

        return self.cached(("saga", names, expected), build)

    def update_saga(
        self,
        run: Runner,
        saga_id: str,
        values: dict[str, Any],
        expect_status: Collection[SagaStatus] | None,
        finishing: bool,
    ) -> bool:
        """One conditional ``UPDATE``: the row lock it takes makes it a compare-and-set.

        `finishing`: the change moves the saga into a terminal status (PostgreSQL
        announces it with ``pg_notify``).
        """
        names = tuple(sorted(values))
        allowed = None if expect_status is None else sorted({s.value for s in expect_status})
        if allowed == []:
            return False
        stmt = self.saga_update(names, None if allowed is None else len(allowed))
        params = {f"v_{name}": values[name] for name in names}
        params["sid"] = saga_id
        for i, status in enumerate(allowed or ()):
            params[f"x_{i}"] = status
        written = payload_size(*values, *values.values())
        return run.autocommit(
            lambda conn: conn.execute(stmt, params).rowcount == 1,
            written=written,
            idempotent=False,
        )

    # -- step writes: lock, decide, write ------------------------------------------------------
    def locking(self, count: int, counted: bool, late: bool = False) -> Select[Any]:
        """Lock the execution row, then `count` step rows (``i0``, ``i1``...), reading their
        state, the counter ``cname`` (with `counted`) and the ``late`` JSON (with `late`)."""

        def build() -> Select[Any]:
            e, s, c = self.tables.executions, self.tables.steps, self.tables.counters
            columns: list[Any] = [e.c.status.label("saga_status"), s.c.idx]
            columns += [s.c[name] for name in STEP_STATE]
            source: Any = e.join(s, s.c.saga_id == e.c.saga_id)
            if late:
                columns.append(s.c.late)
            if counted:
                name = bindparam("cname", type_=c.c.name.type)
                source = source.outerjoin(c, (c.c.saga_id == e.c.saga_id) & (c.c.name == name))
                columns.append(c.c.value.label("counter"))
            stmt = (
                select(*columns)
                .select_from(source)
                .where(e.c.saga_id == bindparam("sid", type_=e.c.saga_id.type))
                .where(key_in(s.c.idx, [f"i{j}" for j in range(count)]))
                .with_for_update()
            )
            return self.lock_order(stmt)

        return self.cached(("lock", count, counted, late), build)

    def lock_order(self, stmt: Select[Any]) -> Select[Any]:
        """`stmt` made to lock the execution row before the step rows (MySQL needs a hint)."""
        return stmt

    def lock_step(self, tx: Tx, request: StepRequest, stamp: float) -> dict[int, Any]:
        """Lock and read what the step write decides on: the state of each step row it
        needs (by index), each with the saga's status and the counter's value. `stamp`
        is the ``updated_at`` of a dialect that writes it here (`touches_when_locking`)."""
        indexes = request.indexes
        counted = request.counter is not None
        params: dict[str, Any] = {f"i{j}": i for j, i in enumerate(indexes)}
        params["sid"] = request.saga_id
        if counted:
            params["cname"] = request.counter
        rows = tx.execute(self.locking(len(indexes), counted), params).all()
        return {int(row.idx): row for row in rows}

    def write_step(self, run: Runner, request: StepRequest) -> StepWrite:
        """Compare-and-set one step, bump its counter, maybe start the next stage."""

        def write(tx: Tx) -> StepWrite:
            stamp = now()
            rows = self.lock_step(tx, request, stamp)
            found = rows.get(request.index)
            if found is None:
                raise KeyError(f"no step {request.index} in saga {request.saga_id}")
            expect = request.expect
            if expect is not None and expect.refusal(
                StepStatus(found.status),
                int(found.attempt),
                int(found.comp_attempt),
                SagaStatus(found.saga_status),
                found.lease_owner,
                found.lease_expires_at,
            ):
                tx.rollback_only = self.touches_when_locking  # undo the touch
                return report(found)
            count = request.count_after(found.counter if request.counter is not None else None)
            started = request.may_start(rows, count)
            self.apply(tx, request, count, started, stamp, touch=not self.touches_when_locking)
            if request.finishes(found.saga_status):
                tx.execute(*self.saga_end(request, stamp))
            return report(found, request.values, count, started)

        return run.write(write)

    def apply(
        self,
        tx: Tx,
        request: StepRequest,
        count: int | None,
        started: tuple[int, ...],
        stamp: float,
        *,
        touch: bool = True,
    ) -> None:
        """Write what `write_step` decided (rows locked): the counter, the step rows in one
        ``UPDATE``, and (with `touch`) the execution's ``updated_at``."""
        if count is not None and request.counter is not None:
            counter = {"sid": request.saga_id, "cname": request.counter, "cvalue": count}
            tx.execute(self.counter_set(), counter)
        stmt, params = self.steps_write(request, count, started)
        tx.execute(stmt, params, written=request.written(stamp, count))
        if touch:
            tx.execute(self.touch, {"sid": request.saga_id, "stamp": stamp})

    def saga_end(self, request: StepRequest, stamp: float) -> tuple[Any, dict[str, Any]]:
        """The ``UPDATE`` of the execution that ends the saga with its last step, and its
        values (the row is locked, and the saga was seen RUNNING under that lock)."""
        values = {**(request.finish or {}), "updated_at": stamp}
        names = tuple(sorted(values))
        params = {f"v_{name}": values[name] for name in names}
        params["sid"] = request.saga_id
        return self.saga_update(names, None), params

    def counter_set(self) -> Executable:
        """Insert or overwrite counter ``cname`` of ``sid`` with ``cvalue``."""
        raise NotImplementedError

    def steps_write(
        self, request: StepRequest, count: int | None, started: tuple[int, ...]
    ) -> tuple[Any, dict[str, Any]]:
        """The ``UPDATE`` of the step (with its ``seq``) and the started steps, and its values."""
        values = dict(request.values)
        if count is not None:
            values["seq"] = count
        names = tuple(sorted(values))
        plan = request.start
        shape = () if plan is None else tuple(plan.fields[plan.start.index(i)] for i in started)
        stmt = self.cached(("steps", names, shape), lambda: self.build_steps_write(names, shape))
        params = {f"v_{name}": values[name] for name in names}
        params["sid"], params["at"] = request.saga_id, request.index
        if plan is not None and started:
            params.update(start_params(plan, started))
        return stmt, params

    def build_steps_write(
        self, names: tuple[str, ...], started: tuple[tuple[str, ...], ...]
    ) -> Any:
        """``UPDATE steps``: `names` on step ``at``; each started step ``s<j>`` its fields."""
        s = self.tables.steps
        keys = ["at", *(f"s{j}" for j in range(len(started)))]
        stmt = update(s).where(
            s.c.saga_id == bindparam("sid", type_=s.c.saga_id.type), key_in(s.c.idx, keys)
        )
        return stmt.values(self.step_assignments(names, started))

    def step_assignments(
        self, names: tuple[str, ...], started: tuple[tuple[str, ...], ...]
    ) -> dict[Any, Any]:
        """Column assignments of `build_steps_write`: plain values for one step, else a
        ``CASE idx`` per column choosing each row's value (or keeping its own)."""
        s = self.tables.steps
        if not started:
            return {s.c[name]: bound(f"v_{name}", s.c[name]) for name in names}
        if not names and len(started) == 1:  # one row: no CASE needed
            return {s.c[name]: bound(f"n0_{name}", s.c[name]) for name in started[0]}
        columns = dict.fromkeys([*names, *(name for fields in started for name in fields)])
        assignments: dict[Any, Any] = {}
        for name in columns:
            column = s.c[name]
            whens: list[tuple[ColumnElement[bool], Any]] = []
            if name in names:
                whens.append((s.c.idx == bound("at", s.c.idx), bound(f"v_{name}", column)))
            for j, fields in enumerate(started):
                if name in fields:
                    whens.append(
                        (s.c.idx == bound(f"s{j}", s.c.idx), bound(f"n{j}_{name}", column))
                    )
            assignments[column] = case(*whens, else_=column)
        return assignments

    # -- late outcomes -------------------------------------------------------------------------
    def record_late(
        self,
        run: Runner,
        saga_id: str,
        index: int,
        attempt: int,
        encoded: dict[str, Any],
        expect_state: str | None,
    ) -> StepWrite:
        """Create or move a late-success entry under the step's row lock (one transaction)."""
        entry_key = str(attempt)
        lock = self.locking(1, False, late=True)

        def write(tx: Tx) -> StepWrite:
            found = tx.execute(lock, {"sid": saga_id, "i0": index}).one_or_none()
            if found is None:
                raise KeyError(f"no step {index} in saga {saga_id}")
            late = late_entries(found.late, saga_id, index)
            entry = late.get(entry_key)
            if (entry is None) != (expect_state is None) or (
                entry is not None and entry.get("state") != expect_state
            ):
                return report(found)
            late[entry_key] = {**(entry or {}), **encoded}
            request = StepRequest.of(saga_id, index, {"late": late}, None, None)
            self.apply(tx, request, None, (), now())
            return replace(report(found), applied=True)

        return run.write(write)

    # -- leases ------------------------------------------------------------------------------
    def renew(self, run: Runner, leases: list[Lease], expires: float) -> set[Lease]:
        """Renew `leases` (distinct, in lock order) in one statement; return those renewed."""
        raise NotImplementedError


def bound(name: str, column: Any) -> BindParameter[Any]:
    """A bound parameter `name` of `column`'s type (statements built once, run many times)."""
    return bindparam(name, type_=column.type)
