"""MySQL and MariaDB: no ``UPDATE ... RETURNING``, so a step write reads what it needs
under row locks, then writes.

Creating an execution sends its ``INSERT``s (the steps in one multi-row ``INSERT``) and
COMMIT in one exchange (`direct.Batch`). A step write locks and reads, decides, then
writes: ``SELECT STRAIGHT_JOIN ... FOR UPDATE`` (the execution row first, as every writer
locks it; PyMySQL starts the transaction with it, no BEGIN exchange), then the counter's
upsert when the write counts (not for a stage of one step), one multi-table ``UPDATE``
of the step rows and the execution's ``updated_at``, and COMMIT, sent together in one
exchange: two round trips for any step write, two for a refused one (its COMMIT releases
the locks).
With another driver than PyMySQL the writes go one by one (`SQLDialect.write_step`).
Lease renewals are one ``UPDATE`` joined to a derived table; the rows it matched tell
whether every lease was renewed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    Executable,
    Select,
    bindparam,
    insert,
    literal,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert

from celery_saga.backends.base import Lease, StepWrite, payload_size
from celery_saga.models import SagaStatus, StepStatus, now
from celery_saga_sql import leases as lease_sql
from celery_saga_sql.codec import report
from celery_saga_sql.dialects.base import SQLDialect, bound, key_in
from celery_saga_sql.direct import Batch, Compiled
from celery_saga_sql.stepwrites import StepRequest
from celery_saga_sql.transactions import Runner, Tx


class MySQLDialect(SQLDialect):
    """The SQL store on MySQL 8 and MariaDB 10.5 or later (InnoDB, READ COMMITTED)."""

    backends: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    begin_trips: ClassVar[int] = 0

    def lock_order(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.prefix_with("STRAIGHT_JOIN")

    def counter_set(self) -> Executable:
        def build() -> Executable:
            c = self.tables.counters
            value = bindparam("cvalue", type_=c.c.value.type)
            stmt = mysql_insert(c).values(
                saga_id=bindparam("sid", type_=c.c.saga_id.type),
                name=bindparam("cname", type_=c.c.name.type),
                value=value,
            )
            return stmt.on_duplicate_key_update(value=value)

        return self.cached("counter", build)

    def create(self, run: Runner, row: dict[str, Any], step_rows: list[dict[str, Any]]) -> None:
        """The execution's and the steps' ``INSERT``s and COMMIT in one exchange."""
        if self.engine.driver != "pymysql":
            super().create(run, row, step_rows)
            return
        writes: list[tuple[Compiled, dict[str, Any]]] = [(self._insert(tuple(row), 0), row)]
        if step_rows:
            names = tuple(step_rows[0])
            values = {f"{k}_m{i}": v for i, r in enumerate(step_rows) for k, v in r.items()}
            writes.append((self._insert(names, len(step_rows)), values))
        written = payload_size(row) + payload_size(step_rows)
        run.batched(lambda batch: batch.commit_with(writes, written=written))

    def _insert(self, names: tuple[str, ...], steps: int) -> Compiled:
        """The execution's ``INSERT`` of columns `names` (`steps` 0), or one ``INSERT`` of
        `steps` step rows (values bound as ``<column>_m<i>``), compiled once per shape."""

        def build() -> Compiled:
            if steps == 0:
                e = self.tables.executions
                return Compiled(self.engine, insert(e).values({n: bound(n, e.c[n]) for n in names}))
            s = self.tables.steps
            rows = [{n: bound(f"{n}_m{i}", s.c[n]) for n in names} for i in range(steps)]
            return Compiled(self.engine, insert(s).values(rows))

        return self.cached(("insert", names, steps), build)

    def write_step(self, run: Runner, request: StepRequest) -> StepWrite:
        """Lock and read, decide, then the writes and COMMIT in one exchange."""
        if self.engine.driver != "pymysql":
            return super().write_step(run, request)
        return run.batched(lambda batch: self._write_batched(batch, request))

    def _write_batched(self, batch: Batch, request: StepRequest) -> StepWrite:
        stamp = now()
        indexes = request.indexes
        counted = request.counter is not None
        params: dict[str, Any] = {f"i{j}": i for j, i in enumerate(indexes)}
        params["sid"] = request.saga_id
        if counted:
            params["cname"] = request.counter
        lock = self.compiled(self.locking(len(indexes), counted))
        rows = {int(row.idx): row for row in batch.query(lock, params)}
        found = rows.get(request.index)
        expect = request.expect
        if found is None or (
            expect is not None
            and expect.refusal(
                StepStatus(found.status),
                int(found.attempt),
                int(found.comp_attempt),
                SagaStatus(found.saga_status),
                found.lease_owner,
                found.lease_expires_at,
            )
        ):
            batch.end(commit=True)  # releases the locks; nothing was written
            if found is None:
                raise KeyError(f"no step {request.index} in saga {request.saga_id}")
            return report(found)
        count = request.count_after(found.counter if counted else None)
        started = request.may_start(rows, count)
        writes: list[tuple[Compiled, dict[str, Any]]] = []
        if count is not None and counted:
            counter = {"sid": request.saga_id, "cname": request.counter, "cvalue": count}
            writes.append((self.compiled(self.counter_set()), counter))
        stmt, step_params = self.steps_write(request, count, started)
        step_params["stamp"] = stamp
        writes.append((self.compiled(stmt), step_params))
        if request.finishes(found.saga_status):
            end, end_params = self.saga_end(request, stamp)
            writes.append((self.compiled(end), end_params))
        batch.commit_with(writes, written=request.written(stamp, count))
        return report(found, request.values, count, started)

    def compiled(self, statement: Any) -> Compiled:
        """`statement` (one of this dialect's cached statements) compiled once."""
        return self.cached(("compiled", id(statement)), lambda: Compiled(self.engine, statement))

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
        """The counter's upsert, then one multi-table ``UPDATE`` of steps and execution."""
        if count is not None and request.counter is not None:
            counter = {"sid": request.saga_id, "cname": request.counter, "cvalue": count}
            tx.execute(self.counter_set(), counter)
        stmt, params = self.steps_write(request, count, started)
        params["stamp"] = stamp
        tx.execute(stmt, params, written=request.written(stamp, count))

    def build_steps_write(
        self, names: tuple[str, ...], started: tuple[tuple[str, ...], ...]
    ) -> Any:
        e, s = self.tables.executions, self.tables.steps
        keys = ["at", *(f"s{j}" for j in range(len(started)))]
        assignments = self.step_assignments(names, started)
        assignments[e.c.updated_at] = bindparam("stamp", type_=e.c.updated_at.type)
        stmt = update(s).where(
            s.c.saga_id == bindparam("sid", type_=s.c.saga_id.type),
            key_in(s.c.idx, keys),
            e.c.saga_id == s.c.saga_id,
        )
        return stmt.values(assignments)

    def renew(self, run: Runner, leases: list[Lease], expires: float) -> set[Lease]:
        """One ``UPDATE`` joined to the leases; a read of what was renewed only if some
        lease was lost (the rows matched do not say which)."""
        s = self.tables.steps
        targets = [lease_sql.target(lease) for lease in leases]
        written = payload_size(expires, *(t[:3] for t in targets))
        stmt = lease_sql.renew_from(s, self._leases(targets), expires)
        matched = run.autocommit(lambda conn: conn.execute(stmt).rowcount, written=written)
        if matched == len({(lease.saga_id, lease.index) for lease in leases}) == len(leases):
            return set(leases)  # every step matched, and each has one lease: all renewed
        keys = [(lease.saga_id, lease.index) for lease in leases]
        read = select(*lease_sql.renewed_columns(s)).where(
            tuple_(s.c.saga_id, s.c.idx).in_(keys), s.c.lease_expires_at == expires
        )
        rows = run.autocommit(lambda conn: conn.execute(read).all())
        return lease_sql.renewed(leases, rows)

    def _leases(self, targets: list[tuple[Any, ...]]) -> Any:
        """The leases as a derived table (``SELECT ... UNION ALL SELECT ...``), each
        value typed as the step column it is compared with (owners as VARBINARY)."""
        types = [self.tables.steps.c[name].type for name in lease_sql.COMPARED_WITH]
        rows = [
            select(
                *(
                    literal(value, type_).label(name)
                    for name, value, type_ in zip(lease_sql.FIELDS, target, types, strict=True)
                )
            )
            for target in targets
        ]
        return (rows[0] if len(rows) == 1 else union_all(*rows)).subquery("v")
