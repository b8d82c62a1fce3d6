"""What the conformance suite does not show: costs, notifications, processes, isolation."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update

from celery_saga.backends import Lease, StartNext, StepExpect
from celery_saga.errors import CorruptRecordError
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing import make_execution
from celery_saga_sql import SQLSagaBackend, housekeeping

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


def _until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for `condition` with a deadline (a short pause between checks)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextmanager
def _statements(store: SQLSagaBackend) -> Iterator[list[str]]:
    """Collect every SQL statement the store sends while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    for engine in (store.engine, store.read_engine):
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in (store.engine, store.read_engine):
            event.remove(engine, "before_cursor_execute", record)


def _raw_steps(store: SQLSagaBackend, saga_id: str) -> dict[int, tuple[Any, ...]]:
    steps = store.tables.steps
    with store.read_engine.connect() as conn:
        rows = conn.execute(select(steps).where(steps.c.saga_id == saga_id)).all()
    return {row.idx: tuple(row) for row in rows}


# -- a step write costs O(that step) -------------------------------------------------------


def test_step_write_touches_only_that_step_row(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    big = {"blob": "x" * 100_000}  # bigger than MySQL's TEXT: LONGTEXT columns hold it
    execution = make_execution(steps=40)
    store.create(execution)
    for i in (0, 2, 39):
        store.update_step(execution.saga_id, i, {"status": StepStatus.SUCCESS, "output": big})
    before = _raw_steps(store, execution.saga_id)
    store.stats.reset()
    with _statements(store) as seen:
        write = store.update_step(
            execution.saga_id,
            1,
            {"status": StepStatus.RUNNING, "attempt": 1},
            expect=StepExpect(status=_FORWARD),
            count_in="stage:1",
        )
    assert write.applied
    assert write.count == 1
    after = _raw_steps(store, execution.saga_id)
    changed = {i for i in before if before[i] != after[i]}
    assert changed == {1}
    assert store.stats.bytes_written < 300  # the big outputs of other steps are not rewritten
    # No statement reads or writes the steps table without naming the one step.
    steps = store.tables.steps.name
    for statement in seen:
        if steps in statement:
            assert re.search(r"\bidx = ", statement), statement
    assert store.get(execution.saga_id).step(2).output == big  # type: ignore[union-attr]


def test_step_write_cost_does_not_grow_with_the_saga(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    costs = []
    for size in (2, 80):
        execution = make_execution(steps=size)
        store.create(execution)
        store.stats.reset()
        store.update_step(
            execution.saga_id,
            1,
            {"status": StepStatus.SUCCESS, "output": {"n": 1}},
            expect=StepExpect(status=_FORWARD),
            count_in="stage:1",
        )
        costs.append(store.stats.snapshot())
    assert costs[0]["round_trips"] == costs[1]["round_trips"]
    # The same bytes, give or take the digits of the timestamp written.
    assert abs(costs[0]["bytes_written"] - costs[1]["bytes_written"]) <= 4


def test_postgresql_rewrites_no_other_step_row(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """PostgreSQL gives every row version a new xmin: only step 1 gets one."""
    store = make_store(postgres_url)
    execution = make_execution(steps=5)
    store.create(execution)
    steps = store.tables.steps
    query = select(steps.c.idx, text("xmin::text")).where(steps.c.saga_id == execution.saga_id)

    def versions() -> dict[int, str]:
        with store.read_engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(query)}

    before = versions()
    store.update_step(execution.saga_id, 1, {"status": StepStatus.RUNNING}, count_in="c")
    after = versions()
    assert {i for i in before if before[i] != after[i]} == {1}


# -- round trips, as counted and as sent ---------------------------------------------------------

#: (plain write, write with count_in, refused write) round trips per database. MySQL's
#: are the locking read, then the writes and COMMIT in one exchange (a refusal: COMMIT).
#: SQLite's are statements (BEGIN IMMEDIATE, the read folded into the execution's touch,
#: the counter, the step, COMMIT; a refusal rolls the touch back).
EXPECTED_TRIPS = {"postgresql": (1, 1, 1), "mysql": (2, 2, 2), "sqlite": (4, 5, 3)}


def _three_writes(store: SQLSagaBackend) -> tuple[int, int, int]:
    execution = make_execution()
    store.create(execution)
    store.get(execution.saga_id)
    trips = []
    for index, expect, count_in in (
        (0, None, None),
        (1, None, "stage"),
        (1, StepExpect(status=frozenset({StepStatus.PENDING})), None),
    ):
        store.stats.reset()
        store.update_step(
            execution.saga_id,
            index,
            {"status": StepStatus.RUNNING},
            expect=expect,
            count_in=count_in,
        )
        trips.append(store.stats.round_trips)
    return trips[0], trips[1], trips[2]


def test_round_trips_per_step_write(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    name = (
        "mysql" if store.engine.dialect.name in ("mysql", "mariadb") else store.engine.dialect.name
    )
    assert _three_writes(store) == EXPECTED_TRIPS[name]
    execution = make_execution()
    store.create(execution)
    for read in (lambda: store.get(execution.saga_id), lambda: store.list(limit=5)):
        store.stats.reset()
        read()
        assert store.stats.round_trips == 1
    store.stats.reset()
    store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})
    assert store.stats.round_trips == 1


def test_counted_round_trips_match_what_pymysql_sends(
    mysql_url: str, make_store: Callable[..., SQLSagaBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymysql.connections

    store = make_store(mysql_url)
    store.upgrade_schema()
    sent: list[bytes | str] = []
    original = pymysql.connections.Connection._execute_command

    def counting(self: Any, command: int, sql: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            sent.append(sql)
        return original(self, command, sql)

    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", counting)
    execution = make_execution()
    store.create(execution)
    sent.clear()
    store.stats.reset()
    store.update_step(execution.saga_id, 0, {"status": StepStatus.RUNNING}, count_in="c")
    assert store.stats.round_trips == len(sent) == 2, sent
    last = sent[-1].decode() if isinstance(sent[-1], bytes) else sent[-1]
    assert last.count(";") == 2 and last.endswith("; COMMIT"), sent  # counter, step, COMMIT


def test_counted_round_trips_match_what_psycopg_sends(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(postgres_url)
    with tempfile.TemporaryFile("w+") as trace:

        def traced(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.pgconn.trace(trace.fileno())

        for engine in (store.engine, store.read_engine):
            event.listen(engine, "connect", traced)
        execution = make_execution()
        store.create(execution)
        store.get(execution.saga_id)
        trace.seek(0)
        trace.truncate()
        store.stats.reset()
        store.update_step(execution.saga_id, 0, {"status": StepStatus.RUNNING}, count_in="c")
        store.get(execution.saga_id)
        trace.flush()
        trace.seek(0)
        # Each exchange ends with a Sync (extended protocol) or is a simple Query.
        sent = [
            line
            for line in trace.read().splitlines()
            if "\tF\t" in line and ("\tSync" in line or "\tQuery\t" in line)
        ]
    assert store.stats.round_trips == len(sent) == 2, sent


# -- PostgreSQL: wait() by LISTEN/NOTIFY ----------------------------------------------------------


def _waiting(store: SQLSagaBackend, saga_id: str, timeout: float) -> tuple[threading.Thread, list]:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(store.wait(saga_id, timeout=timeout)))
    thread.start()
    # LISTEN, then the first read: from then on a notification cannot be missed.
    _until(lambda: store.stats.round_trips >= 2, what="the waiter to LISTEN and read")
    return thread, box


def test_postgresql_wait_wakes_on_notify_not_by_polling(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    writer = make_store(postgres_url)
    waiter = make_store(postgres_url)  # another store: other connections, like another process
    waiter.poll_interval = 60.0  # type: ignore[misc]  # polling would take a minute
    waiter.notify_recheck = 60.0  # type: ignore[misc]
    execution, other = make_execution(), make_execution()
    writer.create(execution)
    writer.create(other)
    waiter.get(execution.saga_id)  # tables ready before counting
    waiter.stats.reset()
    thread, box = _waiting(waiter, execution.saga_id, timeout=30)
    # Neither a non-terminal change nor another saga finishing ends the wait.
    writer.update_saga(execution.saga_id, {"status": SagaStatus.COMPENSATING})
    writer.update_saga(other.saga_id, {"status": SagaStatus.COMPLETED})
    assert thread.is_alive()
    started = time.monotonic()
    writer.update_saga(execution.saga_id, {"status": SagaStatus.COMPENSATED, "error": "x"})
    thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert not thread.is_alive()
    assert box[0] is not None
    assert box[0].status is SagaStatus.COMPENSATED
    assert elapsed < 2.0
    # LISTEN, one read before sleeping, one read after the notification: no polling.
    assert waiter.stats.round_trips == 3


def test_postgresql_wait_returns_at_once_when_already_finished(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(postgres_url)
    execution = make_execution(status=SagaStatus.FAILED)
    store.create(execution)
    started = time.monotonic()
    got = store.wait(execution.saga_id, timeout=30)
    assert got is not None
    assert got.status is SagaStatus.FAILED
    assert time.monotonic() - started < 2.0


def test_postgresql_notifies_only_applied_terminal_changes(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    import psycopg

    store = make_store(postgres_url)
    refused, finished = make_execution(), make_execution()
    store.create(refused)
    store.create(finished)
    cargs, cparams = store.engine.dialect.create_connect_args(store.engine.url)
    cparams.pop("context", None)
    with psycopg.connect(*cargs, **cparams, autocommit=True) as listener:
        listener.execute(f'LISTEN "{store.tables.channel}"')
        assert not store.update_saga(
            refused.saga_id,
            {"status": SagaStatus.COMPLETED},
            expect_status={SagaStatus.COMPENSATING},
        )
        assert store.update_saga(finished.saga_id, {"status": SagaStatus.COMPLETED})
        payloads = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert payloads == [finished.saga_id]  # notifications arrive in commit order


def test_postgresql_last_step_notifies_only_when_it_ends_the_saga(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """`update_step_and_finish` sends its ``pg_notify`` from the step's statement, only
    when the saga ended: not for a refused write, nor for a saga that was not RUNNING."""
    import psycopg

    store = make_store(postgres_url)
    refused, turned, finished = (make_execution(steps=1) for _ in range(3))
    for execution in (refused, turned, finished):
        store.create(execution)
    store.update_step(refused.saga_id, 0, {"status": StepStatus.FAILED})
    store.update_saga(turned.saga_id, {"status": SagaStatus.COMPENSATING})
    end = {"status": SagaStatus.COMPLETED, "output": {"ok": True}, "finished_at": time.time()}
    done = {"status": StepStatus.SUCCESS, "output": {"ok": True}}
    expect = StepExpect(status=_FORWARD)
    cargs, cparams = store.engine.dialect.create_connect_args(store.engine.url)
    cparams.pop("context", None)
    with psycopg.connect(*cargs, **cparams, autocommit=True) as listener:
        listener.execute(f'LISTEN "{store.tables.channel}"')
        outcomes = [
            store.update_step_and_finish(e.saga_id, 0, done, end, expect=expect)
            for e in (refused, turned, finished)
        ]
        payloads = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert [(w.applied, ended) for w, ended in outcomes] == [
        (False, False),
        (True, False),
        (True, True),
    ]
    assert payloads == [finished.saga_id]  # notifications arrive in commit order
    assert store.get_status(turned.saga_id) is SagaStatus.COMPENSATING


#: SQLite's are statements: BEGIN IMMEDIATE, the touch that reads, the step, the
#: execution's end, COMMIT (the stage of one step writes no counter row).
FINISH_TRIPS = {"postgresql": 1, "mysql": 2, "sqlite": 5}


def test_last_step_and_saga_end_cost_one_write(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """The last step's write and the saga's end are one transaction: one statement on
    PostgreSQL, the locking read and one exchange on MySQL/MariaDB, one COMMIT on SQLite."""
    store = make_store(database_url)
    execution = make_execution(steps=1)
    store.create(execution)
    store.stats.reset()
    write, ended = store.update_step_and_finish(
        execution.saga_id,
        0,
        {"status": StepStatus.SUCCESS},
        {"status": SagaStatus.COMPLETED, "finished_at": time.time()},
        expect=StepExpect(status=_FORWARD),
        count_in="stage:0",
    )
    assert write.applied and ended and write.count == 1
    assert (
        store.stats.round_trips
        == FINISH_TRIPS[store.engine.dialect.name.replace("mariadb", "mysql")]
    )


def test_polling_stores_still_wait(
    sqlite_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(sqlite_url)
    execution = make_execution()
    store.create(execution)
    thread = threading.Thread(target=lambda: store.wait(execution.saga_id, timeout=30))
    thread.start()
    other = make_store(sqlite_url)
    other.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})
    thread.join(timeout=10)
    assert not thread.is_alive()


def _open_sqlite_at_once(path: Path, count: int) -> tuple[list[BaseException], list[str]]:
    """Open `count` connections to `path` together, each set up as the store does."""
    import sqlite3

    from celery_saga_sql.engines import _sqlite_connect

    barrier = threading.Barrier(count)
    errors: list[BaseException] = []
    modes: list[str] = []

    def open_one() -> None:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        conn.isolation_level = None
        try:
            barrier.wait()
            _sqlite_connect(conn, None)
            modes.append(conn.execute("PRAGMA journal_mode").fetchone()[0])
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors, modes


def test_connections_opening_a_new_sqlite_file_at_once_all_get_wal(tmp_path: Path) -> None:
    """Switching to WAL can fail at once with "database is locked" when several
    connections open a new file together (the busy timeout does not apply): the
    store retries instead of failing the first operation."""
    for attempt in range(40):
        errors, modes = _open_sqlite_at_once(tmp_path / f"race{attempt}.db", 6)
        assert errors == []
        assert modes == ["wal"] * 6


# -- several processes share one database -----------------------------------------------------

_CHILD = """
import sys
from celery_saga.backends import Lease, StartNext, StepExpect
from celery_saga.errors import CorruptRecordError
from celery_saga.models import StepStatus
from celery_saga_sql import SQLSagaBackend

url, prefix, saga_id, index = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = SQLSagaBackend(url, table_prefix=prefix)
store.get(saga_id)
print("ready", flush=True)
sys.stdin.readline()
write = store.update_step(
    saga_id, index, {"status": StepStatus.SUCCESS, "output": {"by": index}},
    expect=StepExpect(status=frozenset({StepStatus.PENDING})), count_in="stage:1",
)
print(write.count, flush=True)
"""


def test_processes_finishing_a_group_together_count_once_each(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    size = 5
    store = make_store(database_url)
    execution = make_execution(stages=[0] + [1] * size)
    store.create(execution)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, database_url, table_prefix, execution.saga_id, str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(1, size + 1)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # release them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        counts = sorted(int(child.communicate(timeout=60)[0].strip()) for child in children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert counts == list(range(1, size + 1))
    got = store.get(execution.saga_id)
    assert got is not None
    assert sorted(s.seq for s in got.steps[1:]) == list(range(1, size + 1))  # type: ignore[type-var]


def _use_in_child(store: SQLSagaBackend, saga_id: str, done: Any) -> None:
    write = store.update_step(saga_id, 0, {"status": StepStatus.RUNNING})
    done.put((write.applied, store.get(saga_id) is not None))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connections(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """Celery's prefork pool forks after the store was used: the child must not share sockets."""
    store = make_store(postgres_url)
    execution = make_execution()
    store.create(execution)
    assert store.get(execution.saga_id) is not None  # the pool now holds connections
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_use_in_child, args=(store, execution.saga_id, done))
    child.start()
    assert done.get(timeout=30) == (True, True)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.update_step(execution.saga_id, 1, {"status": StepStatus.RUNNING}).applied


# -- housekeeping leaves nothing behind ------------------------------------------------------------


def _count_rows(store: SQLSagaBackend) -> tuple[int, int, int]:
    with store.read_engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in store.tables.data_tables
        )


def test_purge_in_batches_and_delete_remove_steps_and_counters(
    database_url: str, make_store: Callable[..., SQLSagaBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 3)
    store = make_store(database_url)
    made = [make_execution() for _ in range(8)]
    for execution in made:
        store.create(execution)
        store.update_step(execution.saga_id, 0, {"status": StepStatus.SUCCESS}, count_in="s")
    keep = made.pop()
    cutoff = time.time()
    for execution in made:
        store.update_saga(
            execution.saga_id, {"status": SagaStatus.COMPLETED, "finished_at": cutoff - 10}
        )
    assert store.purge(cutoff) == 7
    assert _count_rows(store) == (1, 3, 1)
    store.update_saga(keep.saga_id, {"status": SagaStatus.FAILED})
    assert store.delete(keep.saga_id)
    assert _count_rows(store) == (0, 0, 0)


def test_a_stage_of_one_step_is_counted_without_a_counter_row(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """The write completing a stage of one step (``check`` that step, ``get_at`` 1) counts 1
    and starts the next stage with no counter row, as does the last step's write with the
    saga's end; a stage of two steps still counts in its row (1, then 2)."""
    store = make_store(database_url)
    execution = make_execution(stages=[0, 1, 2, 2, 3])
    store.create(execution)
    sid, done = execution.saga_id, {"status": StepStatus.SUCCESS}
    running = {"status": StepStatus.RUNNING, "attempt": 1}
    forward = StepExpect(status=frozenset({StepStatus.PENDING, StepStatus.RUNNING}))

    def hand_on(index: int, stage: int, check: tuple[int, ...], start: tuple[int, ...]) -> Any:
        nxt = StartNext(check=check, start=start, changes=dict.fromkeys(start, running))
        write, _ = store.update_step_and_get(
            sid,
            index,
            done,
            expect=forward,
            count_in=f"stage:{stage}",
            get_at=len(check),
            start_next=nxt,
            read=False,
        )
        return write

    first = hand_on(0, 0, (0,), (1,))
    assert (first.applied, first.count, first.started) == (True, 1, (1,))
    assert hand_on(0, 0, (0,), (1,)).applied is False  # a duplicate: refused, not counted
    second = hand_on(1, 1, (1,), (2, 3))
    assert (second.count, second.started) == (1, (2, 3))
    assert _count_rows(store)[2] == 0  # no counter row for stages of one step
    assert (hand_on(2, 2, (2, 3), (4,)).count, hand_on(3, 2, (2, 3), (4,)).count) == (1, 2)
    assert _count_rows(store)[2] == 1  # the stage of two counts in its row
    store.update_step(sid, 4, running)
    end = {"status": SagaStatus.COMPLETED, "finished_at": time.time()}
    last, finished = store.update_step_and_finish(
        sid, 4, done, end, expect=forward, count_in="stage:3"
    )
    assert (last.applied, last.count, finished) == (True, 1, True)
    got = store.get(sid)
    assert got is not None and got.status is SagaStatus.COMPLETED
    assert [step.seq for step in got.steps] == [1, 1, 1, 2, 1]
    assert _count_rows(store)[2] == 1


def test_table_prefixes_keep_stores_apart(
    database_url: str, make_store: Callable[..., SQLSagaBackend], table_prefix: str
) -> None:
    mine = make_store(database_url)
    theirs = make_store(database_url, table_prefix=f"{table_prefix}b_")
    execution = make_execution(idempotency_key="same-key")
    assert mine.create(execution)[1]
    assert theirs.create(make_execution(idempotency_key="same-key"))[1]
    assert theirs.get(execution.saga_id) is None
    assert [s.saga_id for s in mine.list().items] == [execution.saga_id]


def test_idempotency_keys_compare_exactly(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """Keys differing only in case or accents are different keys (binary collation)."""
    store = make_store(database_url)
    keys = ["order-1", "ORDER-1", "order-1 ", "ördér-1"]
    ids = {store.create(make_execution(idempotency_key=key))[0].saga_id for key in keys}
    assert len(ids) == len(keys)
    for key in keys:
        found = store.find_by_idempotency_key(key)
        assert found is not None
        assert found.idempotency_key == key


def test_store_survives_a_path_with_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "with space"
    folder.mkdir()
    store = SQLSagaBackend(f"sqlite:///{folder / 'sagas.db'}")
    try:
        execution = make_execution()
        store.create(execution)
        assert store.get(execution.saga_id) is not None
    finally:
        store.close()


def test_text_and_json_keep_every_character(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    execution = make_execution(name="zamówienia 🎉", input={"lone": "\ud800", "emoji": "🎉"})
    store.create(execution)
    output = {"surrogate": "\udfff", "mixed": "ż🎉\u0000end", "big": 10**30}
    store.update_step(
        execution.saga_id, 0, {"status": StepStatus.FAILED, "output": output, "error": "błąd 🎉"}
    )
    got = store.get(execution.saga_id)
    assert got is not None
    assert got.saga_name == "zamówienia 🎉"
    assert got.input == {"lone": "\ud800", "emoji": "🎉"}
    assert got.step(0).output == output
    assert got.step(0).error == "błąd 🎉"
    assert [s.saga_id for s in store.list(name="zamówienia 🎉").items] == [execution.saga_id]


# -- deadline_at, cancelled_at and the CANCELLED status ------------------------------------------


def test_deadline_and_cancelled_at_round_trip(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    deadline = time.time() + 3600.123456789
    execution = make_execution(idempotency_key="with-deadline")
    execution.deadline_at = deadline
    store.create(execution)
    got = store.get(execution.saga_id)
    assert got is not None
    assert got.deadline_at == deadline  # a double holds the float exactly
    assert got.cancelled_at is None
    assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}
    found = store.find_by_idempotency_key("with-deadline")
    assert found is not None
    assert found.deadline_at == deadline

    cancelled = time.time()
    changes = {"status": SagaStatus.CANCELLED, "cancelled_at": cancelled, "finished_at": cancelled}
    assert store.update_saga(execution.saga_id, changes, expect_status={SagaStatus.RUNNING})
    # A second cancel is a refused compare-and-set and changes nothing.
    later = {"status": SagaStatus.CANCELLED, "cancelled_at": cancelled + 5}
    assert not store.update_saga(execution.saga_id, later, expect_status={SagaStatus.RUNNING})
    got = store.get(execution.saga_id)
    assert got is not None
    assert (got.status, got.cancelled_at, got.finished_at, got.deadline_at) == (
        SagaStatus.CANCELLED,
        cancelled,
        cancelled,
        deadline,
    )
    with pytest.raises(ValueError, match="cannot set"):  # fixed when the execution is created
        store.update_saga(execution.saga_id, {"deadline_at": deadline + 1})
    assert store.update_saga(execution.saga_id, {"cancelled_at": None})
    got = store.get(execution.saga_id)
    assert got is not None
    assert (got.cancelled_at, got.deadline_at) == (None, deadline)
    # Stored as numbers in their own columns (not inside JSON text).
    executions = store.tables.executions
    query = select(executions.c.deadline_at, executions.c.cancelled_at, executions.c.status).where(
        executions.c.saga_id == execution.saga_id
    )
    with store.read_engine.connect() as conn:
        row = conn.execute(query).one()
    assert tuple(row) == (deadline, None, "cancelled")
    listed = store.list(status="cancelled").items
    assert [(s.saga_id, s.status) for s in listed] == [(execution.saga_id, SagaStatus.CANCELLED)]


def test_cancelled_executions_are_finished_for_delete_purge_and_wait(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    old, recent, unstamped, running = (make_execution() for _ in range(4))
    for execution in (old, recent, unstamped, running):
        store.create(execution)
        store.update_step(execution.saga_id, 0, {"status": StepStatus.SUCCESS}, count_in="s")
    cutoff = time.time() + 30
    for execution, at in ((old, cutoff - 100), (recent, cutoff + 100)):
        store.update_saga(
            execution.saga_id,
            {"status": SagaStatus.CANCELLED, "cancelled_at": at, "finished_at": at},
        )
    # Cancelled without finished_at: purge goes by updated_at (before the cutoff).
    store.update_saga(unstamped.saga_id, {"status": SagaStatus.CANCELLED})
    assert store.purge(cutoff) == 2
    assert store.get(old.saga_id) is None
    assert store.get(unstamped.saga_id) is None
    assert store.get(recent.saga_id) is not None
    assert store.get(running.saga_id) is not None
    assert _count_rows(store) == (2, 6, 2)  # their steps and counters went with them

    got = store.wait(recent.saga_id, timeout=10)  # already cancelled: returns at once
    assert got is not None
    assert got.status is SagaStatus.CANCELLED

    with pytest.raises(ValueError, match="only finished"):
        store.delete(running.saga_id)
    box: list[Any] = []
    waiter = threading.Thread(target=lambda: box.append(store.wait(running.saga_id, timeout=30)))
    waiter.start()
    time.sleep(0.2)
    stamp = time.time()
    store.update_saga(running.saga_id, {"status": SagaStatus.CANCELLED, "cancelled_at": stamp})
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert box[0] is not None
    assert (box[0].status, box[0].cancelled_at) == (SagaStatus.CANCELLED, stamp)

    assert store.delete(recent.saga_id)
    assert store.delete(running.saga_id)
    assert _count_rows(store) == (0, 0, 0)


def test_postgresql_cancelling_wakes_a_waiter_by_notify(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    writer = make_store(postgres_url)
    waiter = make_store(postgres_url)
    waiter.poll_interval = 60.0  # type: ignore[misc]  # polling would take a minute
    waiter.notify_recheck = 60.0  # type: ignore[misc]
    execution = make_execution()
    writer.create(execution)
    waiter.get(execution.saga_id)
    waiter.stats.reset()
    thread, box = _waiting(waiter, execution.saga_id, timeout=30)
    started = time.monotonic()
    writer.update_saga(
        execution.saga_id, {"status": SagaStatus.CANCELLED, "cancelled_at": time.time()}
    )
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
    assert box[0] is not None
    assert box[0].status is SagaStatus.CANCELLED
    assert waiter.stats.round_trips == 3  # LISTEN, a read before sleeping, a read after NOTIFY


# -- leases and late outcomes --------------------------------------------------------------------


def _running_steps(store: SQLSagaBackend, steps: int, **fields: Any) -> str:
    """A stored execution whose steps all run attempt 1 (with `fields` set on each)."""
    execution = make_execution(steps=steps)
    for step in execution.steps:
        step.status, step.attempt = StepStatus.RUNNING, 1
        for name, value in fields.items():
            setattr(step, name, value)
    store.create(execution)
    return execution.saga_id


def test_lease_conditions_in_sql_agree_with_step_expect_refusal(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """Every stored lease against every kind of lease condition, as `refusal` decides."""
    store = make_store(database_url)
    t = time.time()
    stored = [(None, None), (None, t + 10)] + [
        (owner, expires) for owner in ("a", "b") for expires in (None, t - 10, t, t + 10)
    ]
    expects = [
        StepExpect(lease_free_at=free_at, lease_holder=holder, lease_owners=owners)
        for free_at in (None, t)
        for holder in (None, "a")
        for owners in (None, ("a",), (None,), ("a", None), ("b", "a"), ())
        if free_at is not None or holder is None
    ]
    saga_id = _running_steps(store, len(stored))
    for index, (owner, expires) in enumerate(stored):
        changes = {"lease_owner": owner, "lease_expires_at": expires}
        assert store.update_step(saga_id, index, changes).applied
    for index, (owner, expires) in enumerate(stored):
        for expect in expects:
            write = store.update_step(saga_id, index, {"retries": 1}, expect=expect)
            why = expect.refusal(StepStatus.RUNNING, 1, 0, SagaStatus.RUNNING, owner, expires)
            assert write.applied is (why is None), (owner, expires, expect, why)
            assert (write.lease_owner, write.lease_expires_at) == (owner, expires)


def test_lease_owners_compare_exactly(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """Owners differing by a trailing space or by case are other owners (MySQL pads otherwise)."""
    store = make_store(database_url)
    t = time.time()
    saga_id = _running_steps(store, 1, lease_owner="host/1/a", lease_expires_at=t + 30)
    for other in ("host/1/a ", "HOST/1/a"):
        expect = StepExpect(lease_free_at=t, lease_holder=other)
        assert not store.update_step(saga_id, 0, {"retries": 1}, expect=expect).applied
        expect = StepExpect(lease_owners=(other,))
        assert not store.update_step(saga_id, 0, {"retries": 1}, expect=expect).applied
        assert store.renew_leases([Lease(saga_id, 0, other, 1)], t + 60) != []
    got = store.get(saga_id)
    assert got is not None
    assert (got.step(0).lease_owner, got.step(0).lease_expires_at) == ("host/1/a", t + 30)
    assert store.renew_leases([Lease(saga_id, 0, "host/1/a", 1)], t + 60) == []


#: Round trips of renew_leases: (all kept, some lost) per database.
RENEW_TRIPS = {"postgresql": (1, 1), "mysql": (1, 2), "sqlite": (1, 1)}


def _database(store: SQLSagaBackend) -> str:
    name = store.engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def test_renew_leases_round_trips_and_batches(
    database_url: str, make_store: Callable[..., SQLSagaBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(database_url)
    t = time.time()
    mine = _running_steps(store, 5)
    theirs = _running_steps(store, 1, lease_owner="other", lease_expires_at=t + 30)
    leases = [Lease(mine, i, "me", 1) for i in range(5)]
    kept_trips, lost_trips = RENEW_TRIPS[_database(store)]
    for expires in (t + 60, t + 60, t + 90):  # the same expiry again renews too
        store.stats.reset()
        assert store.renew_leases(leases, expires) == []
        assert store.stats.round_trips == kept_trips
    store.stats.reset()
    assert store.renew_leases([*leases, Lease(theirs, 0, "me", 1)], t + 120) == [
        Lease(theirs, 0, "me", 1)
    ]
    assert store.stats.round_trips == lost_trips
    # Past `renew_batch` leases, MySQL/MariaDB and SQLite send one statement per batch.
    monkeypatch.setattr(SQLSagaBackend, "renew_batch", 2)
    store.stats.reset()
    assert store.renew_leases(leases, t + 150) == []
    assert store.stats.round_trips == (1 if _database(store) == "postgresql" else 3)
    got = store.get(mine)
    assert got is not None
    assert {(s.lease_owner, s.lease_expires_at) for s in got.steps} == {("me", t + 150)}


def test_renew_leases_many_at_once(
    database_url: str, make_store: Callable[..., SQLSagaBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of leases, over several batches: each one kept or lost as the memory store says."""
    monkeypatch.setattr(SQLSagaBackend, "renew_batch", 97)
    store = make_store(database_url)
    t = time.time()
    saga_id = _running_steps(store, 400)
    for index in range(0, 400, 7):  # another worker took every seventh step over
        assert store.update_step(
            saga_id, index, {"lease_owner": "other", "lease_expires_at": t + 30}
        ).applied
    compensating = {"status": StepStatus.COMPENSATING, "comp_attempt": 2}
    for index in range(3, 400, 11):  # and these compensate, at compensation attempt 2
        assert store.update_step(saga_id, index, compensating).applied
    leases = [Lease(saga_id, i, "me", 1) for i in range(400)]
    leases += [Lease(saga_id, i, "me", 2, compensation=True) for i in range(3, 400, 11)]
    lost = store.renew_leases(leases, t + 60)
    expected = [
        lease
        for lease in leases
        if lease.index % 7 == 0 or (lease.index % 11 == 3) is not lease.compensation
    ]
    assert lost == expected
    got = store.get(saga_id)
    assert got is not None
    for step in got.steps:
        if step.index % 7 == 0:
            assert (step.lease_owner, step.lease_expires_at) == ("other", t + 30)
        else:
            assert (step.lease_owner, step.lease_expires_at) == ("me", t + 60)


def test_two_claims_on_one_unowned_step_one_wins(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    t = time.time()
    saga_id = _running_steps(store, 1)
    claims = [Lease(saga_id, 0, "host/1/a", 1), Lease(saga_id, 0, "host/2/b", 1)]
    lost = store.renew_leases(claims, t + 60)
    assert len(lost) == 1
    got = store.get(saga_id)
    assert got is not None
    winner = next(lease for lease in claims if lease not in lost)
    assert (got.step(0).lease_owner, got.step(0).lease_expires_at) == (winner.owner, t + 60)
    # From then on the loser's renewals are lost, the winner's kept.
    assert store.renew_leases(claims, t + 90) == lost


def test_renew_leases_writes_only_the_leased_step_rows(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    """A heartbeat neither touches the execution row nor other steps."""
    store = make_store(database_url)
    saga_id = _running_steps(store, 4)
    before = store.get(saga_id)
    raw = _raw_steps(store, saga_id)
    with _statements(store) as seen:
        assert store.renew_leases([Lease(saga_id, 2, "me", 1)], time.time() + 60) == []
    assert all(store.tables.executions.name not in statement for statement in seen)
    after = store.get(saga_id)
    assert before is not None and after is not None
    assert after.updated_at == before.updated_at
    assert {i for i, row in _raw_steps(store, saga_id).items() if raw[i] != row} == {2}


def test_new_step_fields_round_trip_exactly(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    execution = make_execution()
    step = execution.steps[1]
    step.status, step.attempt = StepStatus.RUNNING, 3
    step.lease_owner = "wörker-ż.example.com/4242/" + "t" * 400
    step.lease_expires_at = time.time() + 30.123456789
    step.sent_at = time.time()
    step.sends = 2
    step.late = {"1": {"state": "recorded", "output": {"big": 2**62 + 1, "f": 0.1 + 0.2}}}
    store.create(execution)
    got = store.get(execution.saga_id)
    assert got is not None
    assert [s.to_dict() for s in got.steps] == [s.to_dict() for s in execution.steps]
    changes = {"late": None, "sends": 3, "sent_at": None, "lease_owner": None}
    write = store.update_step(execution.saga_id, 1, changes)
    assert (write.lease_owner, write.lease_expires_at) == (None, step.lease_expires_at)
    got = store.get(execution.saga_id)
    assert got is not None
    assert (got.step(1).late, got.step(1).sends, got.step(1).sent_at) == (None, 3, None)


def test_record_late_reports_the_step_and_keeps_other_entries(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    t = time.time()
    saga_id = _running_steps(store, 2, lease_owner="host/1/a", lease_expires_at=t + 30)
    before = store.get(saga_id)
    write = store.record_late(saga_id, 1, 1, {"state": "recorded", "output": {"n": 2**63 - 1}})
    assert write.applied
    assert (write.status, write.attempt, write.comp_attempt, write.saga_status) == (
        StepStatus.RUNNING,
        1,
        0,
        SagaStatus.RUNNING,
    )
    assert (write.lease_owner, write.lease_expires_at, write.count) == ("host/1/a", t + 30, None)
    refused = store.record_late(saga_id, 1, 1, {"state": "compensated"}, expect_state="gone")
    assert not refused.applied
    assert (refused.status, refused.lease_owner) == (StepStatus.RUNNING, "host/1/a")
    moved = {"state": StepStatus.COMPENSATING, "comp_task_id": "c-1"}  # enums stored as values
    assert store.record_late(saga_id, 1, 1, moved, expect_state="recorded").applied
    got = store.get(saga_id)
    assert got is not None and before is not None
    assert got.step(1).late == {
        "1": {"state": "compensating", "output": {"n": 2**63 - 1}, "comp_task_id": "c-1"}
    }
    assert got.step(0).late is None
    assert got.updated_at >= before.updated_at
    with pytest.raises(KeyError):
        store.record_late(saga_id, 7, 1, {"state": "recorded"})


def test_record_late_refuses_to_overwrite_a_damaged_late_field(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    saga_id = _running_steps(store, 1)
    steps = store.tables.steps
    with store.engine.begin() as conn:
        conn.execute(
            update(steps).where(steps.c.saga_id == saga_id, steps.c.idx == 0).values(late="[1]")
        )
    with pytest.raises(CorruptRecordError, match="late"):
        store.record_late(saga_id, 0, 1, {"state": "recorded"})
    with store.read_engine.connect() as conn:
        late = conn.execute(select(steps.c.late).where(steps.c.saga_id == saga_id)).scalar()
    assert late == "[1]"


def test_counted_round_trips_of_renew_leases_match_what_the_drivers_send(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    t = time.time()
    saga_id = _running_steps(store, 3)
    leases = [Lease(saga_id, i, "me", 1) for i in range(3)]
    store.renew_leases(leases, t)
    with _statements(store) as seen:
        store.stats.reset()
        assert store.renew_leases(leases, t + 60) == []
    assert store.stats.round_trips == len(seen) == 1, seen
