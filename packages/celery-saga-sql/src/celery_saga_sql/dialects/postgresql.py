"""PostgreSQL: every write is one statement, so one round trip with no BEGIN/COMMIT.

- A step write (`write_step`) is one ``SELECT`` whose data-modifying CTEs do it all:
  ``cur`` locks the execution row and the step row (``SELECT ... FOR UPDATE``: after
  waiting for another writer it returns the rows as that writer committed them); the
  expectations are evaluated on ``cur`` by the server (`celery_saga_sql.conditions`);
  ``bumped`` upserts the counter (a stage of one step has none: its count is 1,
  `StepRequest.alone`), ``stepped`` updates the step row (its ``seq`` the count),
  ``touched`` the execution's ``updated_at``, and ``started`` marks the next stage's
  steps started when the counter reached ``get_at``, the saga
  runs and every step the stage waits for succeeded (the other members' rows locked by
  ``checked``, so their latest versions are seen). The statement commits as a whole or
  not at all, and reports the locked state, the counter and the steps it started.
- `create` inserts the execution and its steps in one statement (rows as JSON, spread
  into the tables' row types by ``json_populate_record``).
- `update_saga` into a terminal status sends ``pg_notify`` from the same statement, so
  the notification is committed with the change, and only if the compare-and-set applied.
- `renew` takes any number of leases as arrays (``unnest``).

Each statement is built once per shape (which fields are written, which expectations
checked, how many steps start) and run with bound parameters; the step write and the
finishing update are compiled once and run on the driver's cursor (`direct`).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, ClassVar

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Integer,
    String,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg

from celery_saga.backends.base import Lease, StepWrite, payload_size
from celery_saga.models import SagaExecution, SagaStatus, StepStatus, now
from celery_saga_sql import conditions
from celery_saga_sql import leases as lease_sql
from celery_saga_sql.codec import STEP_STATE, report
from celery_saga_sql.dialects.base import SQLDialect, key_in
from celery_saga_sql.direct import Compiled
from celery_saga_sql.schema import Tables
from celery_saga_sql.stepwrites import StepRequest, start_params
from celery_saga_sql.transactions import Runner

#: The leases' columns on PostgreSQL, where they travel as one array each.
_LEASE_COLUMNS: list[ColumnClause[Any]] = [
    column("saga_id", String()),
    column("idx", Integer()),
    column("owner", String()),
    column("status", String()),
    column("attempt", Integer()),
    column("comp_attempt", Integer()),
]
_SUCCESS = StepStatus.SUCCESS.value
_PENDING = StepStatus.PENDING.value
_RUNNING = SagaStatus.RUNNING.value


class PostgreSQLDialect(SQLDialect):
    """The SQL store on PostgreSQL (12 or later)."""

    backends: ClassVar[tuple[str, ...]] = ("postgresql",)
    begin_trips: ClassVar[int] = 1
    renews_any_number: ClassVar[bool] = True

    def __init__(self, tables: Tables, engine: Engine) -> None:
        super().__init__(tables, engine)
        s = tables.steps
        arrays = [bindparam(f"l_{c.name}", type_=pg.ARRAY(c.type)) for c in _LEASE_COLUMNS]
        leases = func.unnest(*arrays).table_valued(*_LEASE_COLUMNS).render_derived("v")
        renewal = lease_sql.renew_from(s, leases, bindparam("l_expires"))
        self._renew = renewal.returning(*lease_sql.renewed_columns(s))
        quote = engine.dialect.identifier_preparer.format_table
        e_name, s_name = quote(tables.executions), quote(s)
        self._create = Compiled(
            engine,
            text(
                f"WITH e AS (INSERT INTO {e_name} SELECT * FROM json_populate_record("
                f"NULL::{e_name}, CAST(:e AS json)) RETURNING 1) INSERT INTO {s_name} SELECT * "
                f"FROM json_populate_recordset(NULL::{s_name}, CAST(:s AS json))"
            ),
        )

    def read_execution(self, conn: Connection, saga_id: str) -> SagaExecution | None:
        """The joined read, compiled once and run on the driver's cursor."""
        stmt = self.cached("get-direct", lambda: Compiled(self.engine, self.get_by_id))
        return self.codec.decode(stmt.all(conn, {"saga_id": saga_id}))  # type: ignore[arg-type]

    # -- create and update_saga ----------------------------------------------------------------
    def create(self, run: Runner, row: dict[str, Any], step_rows: list[dict[str, Any]]) -> None:
        """One statement: the execution row and every step row, as JSON."""
        params = {"e": json.dumps(row), "s": json.dumps(step_rows)}
        written = payload_size(row) + payload_size(step_rows)
        run.autocommit(
            lambda conn: self._create.execute(conn, params), written=written, idempotent=False
        )

    def update_saga(
        self,
        run: Runner,
        saga_id: str,
        values: dict[str, Any],
        expect_status: Collection[SagaStatus] | None,
        finishing: bool,
    ) -> bool:
        if not finishing:
            return super().update_saga(run, saga_id, values, expect_status, finishing)
        names = tuple(sorted(values))
        allowed = None if expect_status is None else sorted({s.value for s in expect_status})
        if allowed == []:
            return False
        expected = None if allowed is None else len(allowed)

        def build() -> Any:
            # UPDATE and NOTIFY in one statement: the notification is sent when the
            # change commits, and only if the compare-and-set applied.
            e = self.tables.executions
            done = self.saga_update(names, expected).returning(e.c.saga_id).cte("done")
            notify = select(done.c.saga_id, func.pg_notify(self.tables.channel, done.c.saga_id))
            return Compiled(self.engine, notify)

        stmt = self.cached(("saga-notify", names, expected), build)
        params = {f"v_{name}": values[name] for name in names}
        params["sid"] = saga_id
        for i, status in enumerate(allowed or ()):
            params[f"x_{i}"] = status
        return run.autocommit(
            lambda conn: stmt.one_or_none(conn, params) is not None,
            written=payload_size(*values, *values.values()),
            idempotent=False,
        )

    # -- step writes -------------------------------------------------------------------------------
    def counter_set(self) -> Executable:
        def build() -> Executable:
            c = self.tables.counters
            stmt = pg.insert(c).values(
                saga_id=bindparam("sid", type_=c.c.saga_id.type),
                name=bindparam("cname", type_=c.c.name.type),
                value=bindparam("cvalue", type_=c.c.value.type),
            )
            return stmt.on_conflict_do_update(
                index_elements=[c.c.saga_id, c.c.name], set_={"value": stmt.excluded.value}
            )

        return self.cached("counter", build)

    def write_step(self, run: Runner, request: StepRequest) -> StepWrite:
        """The whole step write in one statement (see the module's docstring)."""
        names = tuple(sorted(request.values))
        counted = request.counter is not None
        plan = request.start
        start_shape = None
        others: list[int] = []
        if plan is not None:
            others = [i for i in plan.check if i != request.index]
            stored = request.index in plan.check and "status" not in request.values
            start_shape = (plan.fields, len(others), stored)
        finish = None if request.finish is None else tuple(sorted(request.finish))
        shape = (names, conditions.shape(request.expect), counted, start_shape, finish)
        stmt = self.cached(
            ("step", shape), lambda: Compiled(self.engine, self._step_statement(*shape))
        )
        stamp = now()
        params = {f"v_{name}": value for name, value in request.values.items()}
        params.update({f"f_{name}": value for name, value in (request.finish or {}).items()})
        params.update(conditions.params(request.expect))
        params.update(sid=request.saga_id, at=request.index, stamp=stamp)
        if counted:
            params["cname"] = request.counter
        if plan is not None:
            params.update(start_params(plan, plan.start))
            params.update({f"c{k}": i for k, i in enumerate(others)})
            if counted:
                params["get_at"] = request.get_at
        found = run.autocommit(
            lambda conn: stmt.one_or_none(conn, params),
            written=request.written(stamp, request.count_after(0)),
            idempotent=False,
        )
        if found is None:
            raise KeyError(f"no step {request.index} in saga {request.saga_id}")
        if not found.applied:
            return report(found)
        count = int(found.bumped_to) if counted else request.count_after(None)
        began = set(found.started or ()) if plan is not None else set()
        started = tuple(i for i in plan.start if i in began) if plan is not None else ()
        return report(found, request.values, count, started)

    def _step_statement(
        self,
        names: tuple[str, ...],
        expected: conditions.Shape,
        counted: bool,
        start: tuple[tuple[tuple[str, ...], ...], int, bool] | None,
        finish: tuple[str, ...] | None = None,
    ) -> Any:
        """The step write of one shape: `names` written, `expected` checked, counted or
        not, `start` (the started steps' fields, how many other steps the stage waits
        for, whether the written step's stored status counts) or None, and `finish`: the
        execution's fields that end the saga if it runs (then ``pg_notify``), or None."""
        e, s = self.tables.executions, self.tables.steps
        sid = bindparam("sid", type_=e.c.saga_id.type)
        idx = bindparam("at", type_=s.c.idx.type)
        cur = (
            select(e.c.status.label("saga_status"), *[s.c[name] for name in STEP_STATE])
            .select_from(e.join(s, s.c.saga_id == e.c.saga_id))
            .where(e.c.saga_id == sid, s.c.idx == idx)
            .with_for_update()
            .cte("cur")
        )

        def holds() -> ColumnElement[bool]:
            where = conditions.clauses(cur, expected)
            return exists(select(literal_column("1")).select_from(cur).where(*where))

        columns: list[Any] = [cur.c.saga_status, *[cur.c[name] for name in STEP_STATE]]
        columns.append(holds().label("applied"))
        ctes: list[Any] = []
        row: dict[Any, Any] = {
            s.c[name]: bindparam(f"v_{name}", type_=s.c[name].type) for name in names
        }
        bumped: Any = None
        if counted:
            bumped = self._bump(holds()).cte("bumped")
            row[s.c.seq] = select(bumped.c.value).scalar_subquery()
            columns.append(select(bumped.c.value).scalar_subquery().label("bumped_to"))
            ctes.append(bumped)
        if row:
            step = update(s).where(s.c.saga_id == sid, s.c.idx == idx, holds()).values(row)
            ctes.append(step.returning(s.c.idx).cte("stepped"))
        stamp = bindparam("stamp", type_=e.c.updated_at.type)
        touching: dict[Any, Any] = {e.c.updated_at: stamp}
        running = select(cur.c.saga_status).scalar_subquery() == literal(_RUNNING)
        for name in finish or ():  # the saga's end, only if it runs (one UPDATE of the row)
            value = bindparam(f"f_{name}", type_=e.c[name].type)
            touching[e.c[name]] = case((running, value), else_=e.c[name])
        touch = update(e).where(e.c.saga_id == sid, holds()).values(touching)
        touched = touch.returning(e.c.saga_id).cte("touched")
        ctes.append(touched)
        if finish is not None:  # announced when the end commits, as `update_saga` does
            notify = func.pg_notify(self.tables.channel, touched.c.saga_id)
            notified = select(func.count(notify)).select_from(touched).where(running)
            columns.append(notified.scalar_subquery().label("notified"))
        if start is not None:
            started = self._start(cur, holds(), bumped, *start).cte("started")
            columns.append(select(func.array_agg(started.c.idx)).scalar_subquery().label("started"))
            ctes.append(started)
        return select(*columns).add_cte(*ctes)

    def _bump(self, only_if: ColumnElement[bool]) -> Any:
        """``INSERT ... SELECT WHERE only_if ON CONFLICT DO UPDATE value = value + 1
        RETURNING value``: the counter ``cname`` bumped if the write applies."""
        counters = self.tables.counters
        source = select(
            cast(bindparam("sid", type_=counters.c.saga_id.type), counters.c.saga_id.type),
            cast(bindparam("cname", type_=counters.c.name.type), counters.c.name.type),
            literal_column("1"),
        ).where(only_if)
        stmt = pg.insert(counters).from_select(["saga_id", "name", "value"], source)
        return stmt.on_conflict_do_update(
            index_elements=[counters.c.saga_id, counters.c.name],
            set_={"value": counters.c.value + 1},
        ).returning(counters.c.value)

    def _start(
        self,
        cur: Any,
        holds: ColumnElement[bool],
        bumped: Any,
        fields: tuple[tuple[str, ...], ...],
        others: int,
        stored: bool,
    ) -> Any:
        """The ``UPDATE`` marking the next stage's steps (``s<j>``) started, if it may."""
        s = self.tables.steps
        sid = bindparam("sid", type_=s.c.saga_id.type)
        ready: list[ColumnElement[bool]] = [
            holds,
            select(cur.c.saga_status).scalar_subquery() == literal(_RUNNING),
        ]
        if bumped is not None:  # else a stage of one step: its count 1 is `get_at`
            bumped_to = select(bumped.c.value).scalar_subquery()
            ready.append(bumped_to == bindparam("get_at", type_=Integer()))
        if stored:  # the written step keeps its status: it must have succeeded already
            ready.append(select(cur.c.status).scalar_subquery() == literal(_SUCCESS))
        if others:
            k = s.alias("k")
            checked = (
                select(k.c.status)
                .where(k.c.saga_id == sid, key_in(k.c.idx, [f"c{i}" for i in range(others)]))
                .with_for_update()
                .cte("checked")
            )
            count = select(func.count()).select_from(checked)
            ready.append(
                count.where(checked.c.status == literal(_SUCCESS)).scalar_subquery() == others
            )
        keys = [f"s{j}" for j in range(len(fields))]
        return (
            update(s)
            .where(s.c.saga_id == sid, key_in(s.c.idx, keys), s.c.status == literal(_PENDING))
            .where(s.c.attempt == literal(0), *ready)
            .values(self.step_assignments((), fields))  # CASE idx: each its own values
            .returning(s.c.idx)
        )

    # -- leases ---------------------------------------------------------------------------
    def renew(self, run: Runner, leases: list[Lease], expires: float) -> set[Lease]:
        """One statement for any number of leases: arrays, ``unnest``, ``RETURNING``."""
        targets = [lease_sql.target(lease) for lease in leases]
        written = payload_size(expires, *(t[:3] for t in targets))
        columns = zip(*targets, strict=True)
        params: dict[str, Any] = {
            f"l_{name}": list(values)
            for name, values in zip(lease_sql.FIELDS, columns, strict=True)
        }
        params["l_expires"] = expires
        stmt = self._renew
        rows = run.autocommit(lambda conn: conn.execute(stmt, params).all(), written=written)
        return lease_sql.renewed(leases, rows)
