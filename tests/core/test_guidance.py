"""Errors and warnings that say what is wrong and what to do (issue 12), in one process.

- A value that cannot be JSON names its kind (saga input, step input, step output,
  compensation data) and the key path of the bad part, with the fix for that kind; a
  saga's input raises `SagaInputError` (a `StepOutputError`).
- `SagaResult.get(timeout)` raises `SagaTimeoutError` (a `TimeoutError`) carrying the
  status, the step it waits for, the note stored on the execution and what to check.
- A step with no compensation and no ``no_compensation=True`` warns once, at definition,
  naming the saga and the step; child sagas and steps that say so never warn.
- A worker's write to a saga its store has no record of raises `SagaRecordNotFound`,
  naming the store and `saga_backend`, without retries.
- ``celery saga``: --backend after the subcommand, a warning when nothing names a store.
"""

from __future__ import annotations

import pickle
import re
import uuid
import warnings
from datetime import date
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_saga import (
    Saga,
    SagaCompensated,
    SagaInputError,
    SagaRecordNotFound,
    SagaStatus,
    SagaTimeoutError,
    StepOutputError,
    StepResponse,
    StepStatus,
    UncompensatedStepWarning,
    external,
    saga,
    saga_step,
    step,
)
from celery_saga.backends import MemorySagaBackend, register
from celery_saga.cli import EXIT_OK
from celery_saga.cli import saga as saga_cli
from celery_saga.headers import SagaHeader
from celery_saga.response import ensure_json
from celery_saga.runtime import bookkeeping, forward, instrument
from celery_saga.runtime.binding import Runtime
from celery_saga.testing import make_execution


def _app(**conf: Any) -> Celery:
    app = Celery(f"guide-{uuid.uuid4().hex[:8]}", broker="memory://", set_as_current=False)
    app.conf.update(task_always_eager=True, saga_compensation_retry_backoff=0, **conf)
    return app


def _name() -> str:
    """A saga name of this test's own (the warning is once per saga name and step)."""
    return f"guide-{uuid.uuid4().hex[:8]}"


# -- JSON errors: the kind of value and the key path -----------------------------------------


def test_a_saga_input_that_is_not_json_names_the_key_path_and_how_to_convert_it() -> None:
    app = _app(saga_backend=MemorySagaBackend())

    @app.task(shared=False, name=f"{app.main}.noop")
    def noop(**_: Any) -> None:
        return None

    order = Saga(_name(), app=app).add_step(noop, no_compensation=True)
    items = [{"price": 1}, {"price": 2}, {"price": Decimal("9.99")}]
    with pytest.raises(SagaInputError) as info:
        order.run(items=items)
    message = str(info.value)
    assert isinstance(info.value, StepOutputError)  # code that caught the 0.3 error still does
    assert message.startswith(f"the input of saga {order.name!r} is not JSON-serializable")
    assert "found a value of type Decimal at input['items'][2]['price']" in message
    assert "Pass the saga only dicts, lists" in message and "Decimal with str()" in message
    assert "Return only" not in message  # the advice written for a step's return value
    assert app.conf.saga_backend.list().items == []  # nothing was started


@pytest.mark.parametrize(
    ("kind", "value", "path", "advice"),
    [
        ("step input", {"when": date(2024, 1, 2)}, "input['when']", "input mapping"),
        ("step output", {"lines": [1, {2}]}, "output['lines'][1]", "Return only"),
        ("compensation data", {"ids": {1, 2}}, "compensation_data['ids']", "compensation only"),
        ("saga output", {"total": float("nan")}, "output['total']", "no NaN"),
    ],
)
def test_each_kind_of_value_has_its_own_key_path_and_advice(
    kind: str, value: Any, path: str, advice: str
) -> None:
    with pytest.raises(StepOutputError) as info:
        ensure_json(value, "the value", kind)
    assert not isinstance(info.value, SagaInputError)
    assert f" at {path}" in str(info.value), str(info.value)
    assert advice in str(info.value)


def test_a_cycle_is_located_from_the_values_name() -> None:
    data: dict[str, Any] = {"a": []}
    data["a"].append(data)
    with pytest.raises(StepOutputError, match=r"at output\['a'\]\[0\] is one that holds it"):
        ensure_json(data, "the output of step 0 (x)", "step output")


def test_a_step_input_mapping_that_returns_no_json_fails_the_step_naming_the_path() -> None:
    app = _app(saga_backend=MemorySagaBackend())

    @app.task(shared=False, name=f"{app.main}.undo")
    def undo(data: Any) -> None:
        return None

    @saga_step(compensate=undo)
    @app.task(shared=False, name=f"{app.main}.first")
    def first(**_: Any) -> dict[str, Any]:
        return {"ok": True}

    @app.task(shared=False, name=f"{app.main}.second")
    def second(**_: Any) -> None:
        return None

    order = (
        Saga(_name(), app=app)
        .add_step(first)
        .add_step(second, no_compensation=True, input=lambda ctx: {"on": date(2024, 1, 2)})
    )
    result = order.run(order_id="o-1")
    with pytest.raises(SagaCompensated):
        result.get(timeout=5)
    execution = result.execution
    assert execution is not None
    error = execution.step(1).error or ""
    assert error.startswith(f"the input of step 1 ({app.main}.second) is not JSON-serializable")
    assert "type date at input['on']" in error and "input mapping" in error


def test_a_step_output_and_its_compensation_data_are_told_apart() -> None:
    app = _app(saga_backend=MemorySagaBackend())

    @app.task(shared=False, name=f"{app.main}.undo")
    def undo(data: Any) -> None:
        return None

    @saga_step(compensate=undo)
    @app.task(shared=False, name=f"{app.main}.pay")
    def pay(**_: Any) -> StepResponse:
        return StepResponse({"txn": "t-1"}, compensation_data={"refund": {"at": date.today()}})

    result = Saga(_name(), app=app).add_step(pay).run(order_id="o-2")
    with pytest.raises(SagaCompensated):
        result.get(timeout=5)
    error = result.execution.step(0).error or ""  # type: ignore[union-attr]
    assert error.startswith(f"the compensation data of step 0 ({app.main}.pay) is not JSON")
    assert "at compensation_data['refund']['at']" in error


# -- SagaResult.get(timeout): status, note, what to check --------------------------------------


def _stored(store: MemorySagaBackend, *, status: SagaStatus, error: str | None = None) -> str:
    execution = make_execution(name="order", steps=2, status=status)
    store.create(execution)
    if status is SagaStatus.RUNNING:
        store.update_step(
            execution.saga_id, 0, {"status": StepStatus.RUNNING, "attempt": 1, "started_at": 1.0}
        )
    if error is not None:
        store.update_saga(execution.saga_id, {"error": error})
    return execution.saga_id


def test_a_timeout_with_no_progress_says_where_it_waits_and_to_check_the_store() -> None:
    store = MemorySagaBackend()
    saga_id = _stored(store, status=SagaStatus.RUNNING)
    from celery_saga import SagaResult

    with pytest.raises(SagaTimeoutError) as info:
        SagaResult(saga_id, store).get(timeout=0.05)
    error = info.value
    assert isinstance(error, TimeoutError)  # code that caught TimeoutError still does
    assert error.status is SagaStatus.RUNNING and error.note is None
    assert error.saga_id == saga_id and error.timeout == 0.05
    message = str(error)
    assert message.startswith(f"saga order ({saga_id}) did not finish within 0.05s: it is RUNNING")
    assert "waiting for step 0 (tasks.step0) running" in message
    assert "no worker has claimed it" in message
    assert "same `saga_backend`" in message and repr(store) in message
    assert f"no record of saga {saga_id}" in message  # what such a worker logs
    again = pickle.loads(pickle.dumps(error))  # Celery may pickle errors
    assert str(again) == message and again.execution.saga_id == saga_id


def test_a_timeout_carries_the_note_a_worker_stored_on_the_execution() -> None:
    store = MemorySagaBackend()
    note = (
        "saga 'order' is not registered on worker celery@w1, which received the outcome of "
        "step 0: make that worker import the module that defines the saga"
    )
    saga_id = _stored(store, status=SagaStatus.RUNNING, error=note)
    from celery_saga import SagaResult

    with pytest.raises(SagaTimeoutError) as info:
        SagaResult(saga_id, store).get(timeout=0.05)
    assert info.value.note == note
    assert f"Note on the execution: {note}" in str(info.value)
    assert "Do what the note says" in str(info.value)


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (SagaStatus.PENDING, "same idempotency_key"),
        (SagaStatus.COMPENSATING, "undoing its steps"),
    ],
)
def test_a_timeout_advises_by_status(status: SagaStatus, advice: str) -> None:
    store = MemorySagaBackend()
    saga_id = _stored(store, status=status)
    from celery_saga import SagaResult

    with pytest.raises(SagaTimeoutError, match=f"it is {status.value.upper()}.*{advice}"):
        SagaResult(saga_id, store).get(timeout=0.05)


# -- a step nothing would undo warns once, at definition -----------------------------------------


def _tasks(app: Celery) -> SimpleNamespace:
    @app.task(shared=False, name=f"{app.main}.undo")
    def undo(data: Any) -> None:
        return None

    @app.task(shared=False, name=f"{app.main}.plain")
    def plain(**_: Any) -> None:
        return None

    @saga_step(compensate=undo)
    @app.task(shared=False, name=f"{app.main}.undone")
    def undone(**_: Any) -> None:
        return None

    @saga_step(no_compensation=True)
    @app.task(shared=False, name=f"{app.main}.harmless")
    def harmless(**_: Any) -> None:
        return None

    return SimpleNamespace(undo=undo, plain=plain, undone=undone, harmless=harmless)


def _uncompensated(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UncompensatedStepWarning)]


def test_a_step_without_compensation_warns_once_naming_the_saga_and_the_step() -> None:
    app = _app()
    t = _tasks(app)
    name = _name()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Saga(name, app=app).add_step(t.undone).add_step(t.plain)
        Saga(name, app=app).add_step(t.undone).add_step(t.plain)  # defined again: no repeat
    messages = _uncompensated(caught)
    assert messages == [
        f"saga {name!r}: step 1 ({app.main}.plain) has no compensation, so nothing undoes it if "
        "the saga fails after it or is reverted. Give it one (compensate=..., a (task, "
        "compensate) pair in add_parallel, or @saga_step(compensate=...)), or pass "
        "no_compensation=True if it has nothing to undo. To silence this warning everywhere: "
        'warnings.filterwarnings("ignore", category=celery_saga.UncompensatedStepWarning).'
    ]
    assert caught[0].filename == __file__  # it points at the definition, not at celery_saga
    assert issubclass(UncompensatedStepWarning, UserWarning)


def test_steps_that_say_what_undoes_them_or_that_nothing_needs_to_never_warn() -> None:
    app = _app()
    t = _tasks(app)
    child = Saga(_name(), app=app).add_step(t.undone)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (
            Saga(_name(), app=app)
            .add_step(t.undone)  # from @saga_step(compensate=)
            .add_step(t.plain, compensate=t.undo)
            .add_step(t.plain, no_compensation=True)
            .add_step(t.harmless)  # from @saga_step(no_compensation=True)
            .add_step("other.service.task", compensate="other.service.undo")
            .add_parallel((t.plain, t.undo), t.harmless)
            .add_saga(child)  # a child saga is compensated as a whole
            .add_saga(child, compensate=False)
            .add_external("approval", no_compensation=True)
            .add_external("payment", compensate=t.undo)
        )
    assert _uncompensated(caught) == []


def test_external_steps_by_name_steps_parallel_members_and_functional_sagas_warn() -> None:
    app = _app()
    t = _tasks(app)
    name = _name()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (
            Saga(name, app=app)
            .add_external("approval")
            .add_step("other.service.task")
            .add_parallel(t.undone, t.plain)
        )
    messages = _uncompensated(caught)
    assert len(messages) == 3
    assert messages[0].startswith(f"saga {name!r}: external step 0 ('approval') has no comp")
    assert messages[1].startswith(f"saga {name!r}: step 1 (other.service.task) has no comp")
    assert messages[2].startswith(f"saga {name!r}: step 3 ({app.main}.plain) has no comp")

    functional = _name()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @saga(functional, app=app)
        def flow(input: Any) -> Any:
            first = step(t.plain, input)
            external("approval", first, no_compensation=True)
            return step(t.undone, first)

    assert [m.split(" has")[0] for m in _uncompensated(caught)] == [
        f"saga {functional!r}: step 0 ({app.main}.plain)"
    ]
    assert caught[0].filename == __file__


# -- a worker whose store has no record of the saga --------------------------------------------


def test_a_gate_that_finds_no_record_says_which_store_and_does_not_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer_store, worker_store = MemorySagaBackend(), MemorySagaBackend()
    app = _app()
    t = _tasks(app)
    name = _name()
    produced = Saga(name, app=app, backend=producer_store).add_step(t.undone)
    execution = make_execution(name=name, steps=1)
    producer_store.create(execution)
    worker_view = Saga(name, app=app, backend=worker_store).add_step(t.undone)
    rt = Runtime.of(worker_view)
    header = SagaHeader(execution.saga_id, name, 0, 2, definition_hash=rt.definition.hash)
    caplog.set_level("DEBUG", logger="celery_saga")
    with pytest.raises(SagaRecordNotFound) as info:
        bookkeeping.bookkeep(rt, header, forward.step_started, "task-id", 0, False, gate=True)
    message = str(info.value)
    assert message.startswith(f"no record of saga {name!r} {execution.saga_id} in this worker's")
    assert repr(worker_store) in message and "same `saga_backend`" in message
    assert f"Step 0 ({app.main}.undone) was not run" in message
    assert "not retried" in message
    assert isinstance(info.value, instrument.HandledFailure)  # Celery logs it at INFO only
    records = [r for r in caplog.records if r.name == "celery_saga"]
    assert [(r.levelname, r.getMessage().split("] ", 1)[1]) for r in records] == [
        ("ERROR", message)  # once: no "retrying" lines before it
    ]
    assert records[0].saga_id == execution.saga_id  # type: ignore[attr-defined]
    assert produced.definition.hash == rt.definition.hash


# -- the CLI: --backend after the subcommand, a warning when nothing names a store ---------------


class _SharedMemory(MemorySagaBackend):
    """A memory store that every URL of its scheme opens (so a test can fill it first)."""

    shared: MemorySagaBackend | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemorySagaBackend:
        assert cls.shared is not None
        return cls.shared


def _cli(app: Celery, *args: str) -> Any:
    return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=app))


def test_backend_is_accepted_after_the_subcommand_too() -> None:
    scheme = f"guide{uuid.uuid4().hex[:6]}"
    _SharedMemory.shared = store = MemorySagaBackend()
    register(scheme, _SharedMemory)
    execution = make_execution(name="order")
    store.create(execution)
    app = _app()  # no saga_backend: only --backend names the store
    for args in (
        ["list", "--backend", f"{scheme}://x"],
        ["--backend", f"{scheme}://x", "list"],
        ["show", execution.saga_id, "--backend", f"{scheme}://x"],
    ):
        result = _cli(app, *args)
        assert result.exit_code == EXIT_OK, result.output
        assert execution.saga_id in result.stdout
        assert "warning" not in result.stderr


def test_a_command_with_no_app_and_no_backend_warns_that_it_reads_an_empty_store() -> None:
    result = _cli(_app(), "list")
    assert result.exit_code == EXIT_OK
    assert re.match(
        r"warning: no app \(-A\) and no --backend were given, so this reads an in-process "
        r"memory store, which is empty",
        result.stderr,
    ), result.stderr
    assert "celery -A proj saga list" in result.stderr
    assert "celery saga list --backend redis://" in result.stderr
    configured = _cli(_app(saga_backend=MemorySagaBackend()), "list")
    assert configured.stderr == ""
