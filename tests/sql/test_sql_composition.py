"""Saga composition in the SQL store, on PostgreSQL, MariaDB and SQLite.

The conformance suite checks the contract; these check what is particular to SQL:
the columns that hold the new fields, and that listing the children of an
execution is answered from the parent_id index (the database's own query plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select, text

from celery_saga.models import SagaStatus, StepKind
from celery_saga.testing import make_execution
from celery_saga_sql import SQLSagaBackend
from celery_saga_sql.listing import listing_query


def test_new_fields_live_in_their_own_columns(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    parent = make_execution()
    parent.steps[1].kind = StepKind.SAGA.value
    parent.steps[2].kind = StepKind.EXTERNAL.value
    store.create(parent)
    child = make_execution(parent_id=parent.saga_id, parent_step=1)
    store.create(child)
    store.update_step(parent.saga_id, 1, {"child_id": child.saga_id})
    reason = "returned: " + "zażółć 🎉 " * 2000  # long text, beyond MySQL's TEXT too
    assert store.update_saga(parent.saga_id, {"revert_reason": reason})

    e, s = store.tables.executions, store.tables.steps
    with store.read_engine.connect() as conn:
        rows = conn.execute(
            select(e.c.saga_id, e.c.parent_id, e.c.parent_step, e.c.revert_reason).where(
                e.c.saga_id.in_([parent.saga_id, child.saga_id])
            )
        ).all()
        steps = conn.execute(
            select(s.c.idx, s.c.kind, s.c.child_id)
            .where(s.c.saga_id == parent.saga_id)
            .order_by(s.c.idx)
        ).all()
    by_id = {row.saga_id: row for row in rows}
    assert tuple(by_id[child.saga_id])[1:] == (parent.saga_id, 1, None)
    assert tuple(by_id[parent.saga_id])[1:] == (None, None, reason)
    assert [tuple(row) for row in steps] == [
        (0, "task", None),
        (1, "saga", child.saga_id),
        (2, "external", None),
    ]
    got = store.get(parent.saga_id)
    assert got is not None and got.revert_reason == reason


def test_rows_inserted_without_the_new_columns_are_task_steps_of_a_top_level_saga(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """A writer that does not know the columns (an older package) leaves their defaults."""
    store = make_store(database_url)
    execution = make_execution()
    store.create(execution)
    e, s = store.tables.executions, store.tables.steps
    with store.engine.begin() as conn:
        row = dict(
            conn.execute(select(s).where(s.c.saga_id == execution.saga_id, s.c.idx == 0))
            .one()
            ._mapping
        )
        conn.execute(s.delete().where(s.c.saga_id == execution.saga_id, s.c.idx == 0))
        old = {k: v for k, v in row.items() if k not in ("kind", "child_id")}
        conn.execute(s.insert().values(old))
        conn.execute(e.update().where(e.c.saga_id == execution.saga_id).values(schema=1))
    got = store.get(execution.saga_id)
    assert got is not None
    assert (got.schema, got.step(0).kind, got.step(0).child_id, got.parent_id) == (
        1,
        "task",
        None,
        None,
    )


def test_listing_children_is_served_by_the_parent_index(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    parents = [make_execution(name="p") for _ in range(20)]
    base = time.time() - 10_000
    for parent in parents:
        store.create(parent)
        for i in range(10):
            store.create(
                make_execution(
                    name="c", created_at=base + i, parent_id=parent.saga_id, parent_step=i
                )
            )
    wanted = parents[7].saga_id
    assert len(store.list(parent_id=wanted, limit=100).items) == 10
    stmt = listing_query(
        store.tables.executions,
        status=SagaStatus.RUNNING,
        name=None,
        parent_id=wanted,
        created_before=None,
        created_after=None,
        after=(base + 5, "z"),
        limit=3,
    )
    index = f"{store.tables.prefix}ix_executions_parent_created"
    backend = store.engine.dialect.name
    with store.engine.connect() as conn:
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        if backend == "postgresql":
            conn.execute(text(f"ANALYZE {store.tables.executions.name}"))
            conn.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {sql}")))
        elif backend == "sqlite":
            plan = "\n".join(str(tuple(r)) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        else:
            conn.execute(text(f"ANALYZE TABLE {store.tables.executions.name}"))
            plan = "\n".join(str(tuple(r)) for r in conn.execute(text(f"EXPLAIN {sql}")))
        conn.rollback()
    assert index in plan, plan
    page = store.list(parent_id=wanted, status="running", limit=3, cursor=None)
    assert [s.parent_id for s in page.items] == [wanted] * 3
    assert page.items[0].created_at == base + 9
