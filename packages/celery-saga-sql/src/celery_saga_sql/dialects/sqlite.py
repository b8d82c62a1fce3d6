"""SQLite: every write transaction begins with ``BEGIN IMMEDIATE`` (the database's write
lock), so the state read under it cannot change before the write.

A step write is the lock-decide-write transaction of `SQLDialect.write_step`. SQLite
has no data-modifying CTEs or multi-table ``UPDATE``, so each table is its own
statement (statements cost no network round trip here); the read is folded into the
write of the execution's ``updated_at`` (``UPDATE ... RETURNING`` the saga's status,
the counter and the step rows' state), which a refused write rolls back. A step that
finishes its stage and starts the next costs five statements: BEGIN IMMEDIATE, that
read, the counter's upsert (``ON CONFLICT DO UPDATE``), one ``UPDATE`` of the step
rows, COMMIT. Lease renewals are one ``UPDATE ... FROM (VALUES ...) RETURNING`` per
`SQLSagaBackend.renew_batch` leases.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

from sqlalchemy import ColumnClause, Executable, bindparam, column, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from celery_saga.backends.base import Lease, payload_size
from celery_saga_sql import leases as lease_sql
from celery_saga_sql.codec import STEP_STATE
from celery_saga_sql.dialects.base import SQLDialect
from celery_saga_sql.stepwrites import StepRequest
from celery_saga_sql.transactions import Runner, Tx


class SQLiteDialect(SQLDialect):
    """The SQL store on SQLite (3.35 or later: ``RETURNING``)."""

    backends: ClassVar[tuple[str, ...]] = ("sqlite",)
    begin_trips: ClassVar[int] = 1
    touches_when_locking: ClassVar[bool] = True

    def lock_step(self, tx: Tx, request: StepRequest, stamp: float) -> dict[int, Any]:
        """One ``UPDATE executions ... RETURNING``: the touch, and the state to decide on."""
        indexes = request.indexes
        counted = request.counter is not None
        stmt = self.cached(
            ("touch-read", len(indexes), counted), lambda: self._touch_read(len(indexes), counted)
        )
        params: dict[str, Any] = {f"i{j}": i for j, i in enumerate(indexes)}
        params.update(sid=request.saga_id, stamp=stamp)
        if counted:
            params["cname"] = request.counter
        found = tx.execute(stmt, params).one_or_none()
        if found is None:
            return {}
        rows: dict[int, Any] = {}
        for j, index in enumerate(indexes):
            state = {name: getattr(found, f"r{j}_{name}") for name in STEP_STATE}
            if state["status"] is not None:  # NOT NULL: None means no such step
                rows[index] = SimpleNamespace(
                    saga_status=found.saga_status,
                    counter=found.counter if counted else None,
                    **state,
                )
        return rows

    def _touch_read(self, count: int, counted: bool) -> Any:
        e, s, c = self.tables.executions, self.tables.steps, self.tables.counters
        sid = bindparam("sid", type_=e.c.saga_id.type)
        columns: list[Any] = [e.c.status.label("saga_status")]
        if counted:
            name = bindparam("cname", type_=c.c.name.type)
            value = select(c.c.value).where(c.c.saga_id == sid, c.c.name == name)
            columns.append(value.scalar_subquery().label("counter"))
        for j in range(count):
            at = bindparam(f"i{j}", type_=s.c.idx.type)
            for field in STEP_STATE:
                read = select(s.c[field]).where(s.c.saga_id == sid, s.c.idx == at)
                columns.append(read.scalar_subquery().label(f"r{j}_{field}"))
        stamp = bindparam("stamp", type_=e.c.updated_at.type)
        touch = update(e).where(e.c.saga_id == sid).values({e.c.updated_at: stamp})
        return touch.returning(*columns)

    def counter_set(self) -> Executable:
        def build() -> Executable:
            c = self.tables.counters
            stmt = sqlite_insert(c).values(
                saga_id=bindparam("sid", type_=c.c.saga_id.type),
                name=bindparam("cname", type_=c.c.name.type),
                value=bindparam("cvalue", type_=c.c.value.type),
            )
            return stmt.on_conflict_do_update(
                index_elements=[c.c.saga_id, c.c.name], set_={"value": stmt.excluded.value}
            )

        return self.cached("counter", build)

    def renew(self, run: Runner, leases: list[Lease], expires: float) -> set[Lease]:
        """One ``UPDATE ... FROM (VALUES ...) RETURNING`` for these leases."""
        targets = [lease_sql.target(lease) for lease in leases]
        written = payload_size(expires, *(t[:3] for t in targets))
        n = len(targets)
        # A heartbeat holds a few leases: those statements are kept, longer ones built.
        stmt = self.cached(("renew", n), lambda: self._renewal(n)) if n <= 16 else self._renewal(n)
        params: dict[str, Any] = {
            f"l{i}_{name}": value
            for i, t in enumerate(targets)
            for name, value in zip(lease_sql.FIELDS, t, strict=True)
        }
        params["l_expires"] = expires
        rows = run.autocommit(lambda conn: conn.execute(stmt, params).all(), written=written)
        return lease_sql.renewed(leases, rows)

    def _renewal(self, n: int) -> Any:
        """The renewing statement for `n` leases: a ``VALUES`` list (columns column1...)."""
        rows = ", ".join(
            "(" + ", ".join(f":l{i}_{name}" for name in lease_sql.FIELDS) + ")" for i in range(n)
        )
        named = ", ".join(f"column{i + 1} AS {name}" for i, name in enumerate(lease_sql.FIELDS))
        fields: list[ColumnClause[Any]] = [column(name) for name in lease_sql.FIELDS]
        v = text(f"SELECT {named} FROM (VALUES {rows})").columns(*fields).subquery("v")
        steps = self.tables.steps
        stmt = lease_sql.renew_from(steps, v, bindparam("l_expires"))
        return stmt.returning(*lease_sql.renewed_columns(steps))
