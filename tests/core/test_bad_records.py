"""A damaged or too-new stored record is reported, never fatal (memory store, eager mode).

Records are damaged by writing into the memory store's own storage, the way an
operator's hand edit or a broken disk would: the recovery pass reports them (id and
reason, in ``--json`` too) and resumes every healthy execution; `show` names the
problem in one line.
"""

from __future__ import annotations

import json
import logging
import pickle
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_saga import Saga, SagaStatus
from celery_saga.backends import MemorySagaBackend
from celery_saga.cli import saga as saga_cli
from celery_saga.cli.commands import EXIT_OK, EXIT_SOME_ERRORS, EXIT_UNREADABLE
from celery_saga.errors import CorruptRecordError, SchemaVersionError
from celery_saga.models import SagaExecution, StepRecord
from celery_saga.runtime.binding import Runtime
from celery_saga.runtime.recovery import recover
from celery_saga.runtime.start import new_execution


def _app(store: MemorySagaBackend) -> tuple[Celery, dict[str, Saga]]:
    """An eager app on `store` with two sagas of two steps each."""
    app = Celery("bad-records", broker="memory://", set_as_current=False)
    app.conf.update(task_always_eager=True, saga_backend=store)

    @app.task(shared=False, name="bad_records.first")
    def first(**kwargs: Any) -> dict[str, Any]:
        return {"first": kwargs["n"]}

    @app.task(shared=False, name="bad_records.second")
    def second(**kwargs: Any) -> dict[str, Any]:
        return {"second": kwargs["first"] + 1}

    sagas = {
        name: Saga(name, app=app)
        .add_step(first, no_compensation=True)
        .add_step(second, no_compensation=True)
        for name in ("bad_records.a", "bad_records.b")
    }
    return app, sagas


def _stalled(saga: Saga, count: int) -> list[str]:
    """`count` PENDING executions whose first stage was never sent (a lost start)."""
    rt = Runtime.of(saga)
    ids = []
    for n in range(count):
        execution = new_execution(rt.definition, {"n": n}, None, None)
        rt.backend.create(execution)
        ids.append(execution.saga_id)
    return ids


def cli(app: Celery, *args: str) -> Any:
    """Run `celery saga ...` in-process against `app`."""
    return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=app))


def test_recovery_reports_bad_records_and_resumes_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemorySagaBackend()
    app, sagas = _app(store)
    healthy = _stalled(sagas["bad_records.a"], 10)
    too_new, garbage = _stalled(sagas["bad_records.a"], 2)
    store._entries[too_new].header["schema"] = 99
    store._entries[garbage].steps[0]["status"] = "garbage"

    with caplog.at_level(logging.ERROR, logger="celery_saga"):
        report = recover(app, stalled_after=0)

    assert sorted(r.saga_id for r in report.resumed if r.acted) == sorted(healthy)
    for saga_id in healthy:
        execution = store.get(saga_id)
        assert execution is not None and execution.status is SagaStatus.COMPLETED
    reasons = dict(report.errors)
    assert sorted(reasons) == sorted([too_new, garbage])
    assert "schema version 99" in reasons[too_new] and "upgrade" in reasons[too_new]
    assert f"saga record {garbage!r} cannot be read" in reasons[garbage]
    assert "step 0" in reasons[garbage] and "'garbage'" in reasons[garbage]
    assert report.as_dict()["errors"] == [{"saga_id": s, "error": e} for s, e in report.errors]
    # Logged once each, as one line: no traceback per bad record.
    logged = [r for r in caplog.records if getattr(r, "saga_id", None) in (too_new, garbage)]
    assert len(logged) == 2 and all(r.exc_info is None for r in logged)
    # The bad records are left as they were.
    assert store._entries[too_new].header["status"] == SagaStatus.PENDING.value


def test_a_failing_listing_is_reported_and_other_sagas_are_still_resumed() -> None:
    store = MemorySagaBackend()
    app, sagas = _app(store)
    healthy = _stalled(sagas["bad_records.a"], 3)
    (broken,) = _stalled(sagas["bad_records.b"], 1)
    store._entries[broken].header["created_at"] = "yesterday"  # breaks the listing itself

    report = recover(app, stalled_after=0)

    assert sorted(r.saga_id for r in report.resumed if r.acted) == sorted(healthy)
    assert [s for s, _ in report.errors] == ["bad_records.b"]
    assert "listing the pending executions of saga 'bad_records.b' failed" in report.errors[0][1]


def test_cli_recover_and_show_report_bad_records_without_a_traceback() -> None:
    store = MemorySagaBackend()
    app, sagas = _app(store)
    healthy = _stalled(sagas["bad_records.a"], 2)
    too_new, garbage = _stalled(sagas["bad_records.a"], 2)
    store._entries[too_new].header["schema"] = 99
    store._entries[garbage].steps[1]["attempt"] = "three"

    outcome = cli(app, "recover", "--stalled-after", "0", "--json")
    assert outcome.exit_code == EXIT_SOME_ERRORS, outcome.output
    data = json.loads(outcome.stdout)
    assert data["acted"] == 2 and {r["saga_id"] for r in data["resumed"]} == set(healthy)
    errors = {e["saga_id"]: e["error"] for e in data["errors"]}
    assert sorted(errors) == sorted([too_new, garbage])
    assert "attempt is 'three', not an integer" in errors[garbage]

    text = cli(app, "recover", "--stalled-after", "0")
    assert text.exit_code == EXIT_SOME_ERRORS
    assert f"error: {garbage}: saga record" in text.stderr and "errors 2" in text.stdout

    for saga_id, expected in ((too_new, "schema version 99"), (garbage, "not an integer")):
        for args in (["show", saga_id], ["show", saga_id, "--json"], ["retry", saga_id]):
            shown = cli(app, *args)
            assert shown.exit_code == EXIT_UNREADABLE, shown.output
            assert isinstance(shown.exception, SystemExit)  # a clean exit, not a crash
            assert shown.stderr.startswith(f"error: saga record {saga_id!r}")
            assert expected in shown.stderr and "Traceback" not in shown.output
            assert shown.stderr.count("\n") == 1  # one line

    # Once the bad records are repaired, the pass is clean again.
    store._entries[too_new].header["schema"] = 1
    store._entries[garbage].steps[1]["attempt"] = 0
    assert cli(app, "recover", "--stalled-after", "0").exit_code == EXIT_OK
    assert cli(app, "show", garbage).exit_code == EXIT_OK


def test_from_dict_turns_bad_values_into_one_clear_error() -> None:
    step = {"index": 0, "task_name": "t", "stage": 0}
    record = {"saga_id": "s-1", "saga_name": "n", "status": "running", "steps": [step]}
    assert SagaExecution.from_dict(record).steps[0].index == 0
    bad_values: list[tuple[dict[str, Any], str]] = [
        ({"status": "garbage"}, "'garbage' is not a valid SagaStatus"),
        ({"steps": [{**step, "status": "garbage"}]}, "step 0: 'garbage' is not a valid"),
        ({"steps": [{**step, "stage": "1"}]}, "step 0: stage is '1', not an integer"),
        ({"steps": [{"index": 0}]}, "step 0: "),
        ({"steps": ["junk"]}, "step 'junk'"),
        ({"schema": "v2"}, "invalid literal"),
    ]
    for change, message in bad_values:
        with pytest.raises(CorruptRecordError, match="saga record 's-1' cannot be read") as info:
            SagaExecution.from_dict({**record, **change})
        assert message in str(info.value) and info.value.saga_id == "s-1"
        assert "repair or delete it there" in str(info.value)
    with pytest.raises(CorruptRecordError, match="step 0: 3 is not a valid") as step_info:
        StepRecord.from_dict({**step, "status": 3})
    assert step_info.value.saga_id is None
    with pytest.raises(SchemaVersionError, match="upgrade celery-saga-core"):
        SagaExecution.from_dict({**record, "schema": 99})
    error = CorruptRecordError("x is wrong", "s-1")
    again = pickle.loads(pickle.dumps(error))
    assert (again.problem, again.saga_id, str(again)) == ("x is wrong", "s-1", str(error))
    assert isinstance(again, ValueError)  # callers that caught ValueError still do
