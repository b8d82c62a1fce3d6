"""Saga ids from outside are validated before a SQL store sees them.

PostgreSQL's driver raises DataError for a NUL byte in a text parameter; a
`SagaResult` must instead raise a ValueError that says what a saga id looks like,
without sending a statement. A well-formed id that matches nothing reads as None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from celery_saga import SagaResult, SagaStatus
from celery_saga.errors import InvalidSagaId
from celery_saga.ids import new_saga_id
from celery_saga.testing import make_execution
from celery_saga_sql import SQLSagaBackend


@contextmanager
def _statements(store: SQLSagaBackend) -> Iterator[list[str]]:
    """Collect every SQL statement the store sends while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    for engine in {store.engine, store.read_engine}:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in {store.engine, store.read_engine}:
            event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize("bad", ["\x00", "\x00" * 36, "", "x" * 10_000, "a\x00b"])
def test_a_malformed_id_gets_a_clear_value_error_and_sends_no_statement(
    postgres_url: str, make_store: Callable[..., SQLSagaBackend], bad: str
) -> None:
    store = make_store(postgres_url)
    with _statements(store) as seen, pytest.raises(ValueError, match="is not a saga id") as info:
        SagaResult(bad, store)
    assert isinstance(info.value, InvalidSagaId)
    assert "a saga id is a UUID" in str(info.value)
    assert seen == []


def test_ids_on_every_database(
    database_url: str, make_store: Callable[..., SQLSagaBackend]
) -> None:
    store = make_store(database_url)
    with pytest.raises(InvalidSagaId, match=r"'\\x00' is not a saga id: it contains a NUL byte"):
        SagaResult("\x00", store)
    unknown = SagaResult(new_saga_id(), store)
    assert unknown.status is None and unknown.steps is None
    stored, created = store.create(make_execution())
    assert created
    found = SagaResult(stored.saga_id.upper(), store)
    assert found.saga_id == stored.saga_id
    assert found.status is SagaStatus.RUNNING
