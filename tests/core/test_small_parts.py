"""Unit tests of the small parts: ids, headers, responses, the store registry, config."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import BaseModel

from celery_saga import (
    BackendNotFound,
    PermanentFailure,
    StepOutputError,
    StepResponse,
    set_default_backend,
)
from celery_saga.backends import (
    MemorySagaBackend,
    StartNext,
    backend_class,
    installed_schemes,
    register,
)
from celery_saga.backends.helpers import compact_json, plain_value
from celery_saga.backends.registry import backend_from_url
from celery_saga.config import backend_for, get_default_backend
from celery_saga.errors import InvalidSagaId, SchemaVersionError
from celery_saga.headers import SagaHeader
from celery_saga.ids import (
    new_saga_id,
    parse_task_id,
    step_task_id,
    validate_idempotency_key,
    validate_saga_id,
)
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepStatus
from celery_saga.response import ensure_json, normalize_result


class Charge(BaseModel):
    txn: str
    amount: float


def test_normalize_result_splits_output_and_compensation_data() -> None:
    assert normalize_result({"a": 1}) == ({"a": 1}, {"a": 1})
    assert normalize_result(None) == ({}, None)
    assert normalize_result(5) == ({"result": 5}, 5)  # compensation gets the raw value, as in 0.1
    assert normalize_result(StepResponse({"o": 1}, {"c": 2})) == ({"o": 1}, {"c": 2})
    assert normalize_result(StepResponse({"o": 1})) == ({"o": 1}, {"o": 1})
    assert normalize_result(Charge(txn="t", amount=2)) == (
        {"txn": "t", "amount": 2.0},
        {"txn": "t", "amount": 2.0},
    )
    wire = StepResponse(output=Charge(txn="t", amount=1), compensation_data=[1]).__json__()
    assert normalize_result(wire) == ({"txn": "t", "amount": 1.0}, [1])


def test_permanent_failure_carries_plain_compensation_data() -> None:
    with pytest.raises(PermanentFailure) as info:
        StepResponse.permanent_failure("bad", compensation_data=Charge(txn="x", amount=1))
    assert info.value.compensation_data == {"txn": "x", "amount": 1.0}
    assert str(info.value) == "bad"


def test_ensure_json_names_the_bad_type() -> None:
    with pytest.raises(StepOutputError, match=r"output of step 3 .* type set"):
        ensure_json({"ok": [1, {"bad": {1, 2}}]}, "the output of step 3")
    with pytest.raises(StepOutputError, match="float"):
        ensure_json({"nan": float("nan")}, "x")


def test_ids_are_validated_and_task_ids_parse_back() -> None:
    sid = new_saga_id()
    assert validate_saga_id(sid.upper()) == sid
    for bad in ["", "x", {"$ne": None}, "../../etc", sid + "0", None]:
        with pytest.raises(InvalidSagaId, match="not a saga id"):
            validate_saga_id(bad)
    ref = parse_task_id(step_task_id(sid, 12, 3, compensation=True))
    assert (ref.saga_id, ref.index, ref.attempt, ref.compensation) == (sid, 12, 3, True)
    assert parse_task_id("some-other-task-id") is None
    with pytest.raises(ValueError, match="idempotency_key"):
        validate_idempotency_key("x" * 256)


def test_header_round_trips_and_rejects_foreign_data() -> None:
    header = SagaHeader(new_saga_id(), "s", 2, 1, True, "abc", "q")
    assert SagaHeader.from_dict(header.to_dict()) == header
    assert header.idempotency_key.endswith(":2")
    assert SagaHeader.from_dict({"v": 99}) is None
    assert SagaHeader.from_dict("nonsense") is None


def test_newer_schema_is_refused_with_advice() -> None:
    with pytest.raises(SchemaVersionError, match="upgrade celery-saga-core"):
        SagaExecution.from_dict({"saga_id": "x", "saga_name": "n", "schema": 99})


def test_registry_resolves_schemes_and_explains_unknown_ones() -> None:
    assert backend_class("memory") is MemorySagaBackend
    assert "memory" in installed_schemes()
    with pytest.raises(BackendNotFound, match=r"Installed schemes: .*memory"):
        backend_from_url("nosuch://x")
    with pytest.raises(BackendNotFound, match="Did you mean 'memory'"):
        backend_from_url("memroy://")
    with pytest.raises(BackendNotFound, match="not a URL"):
        backend_from_url("localhost:6379")


@pytest.mark.parametrize(
    ("scheme", "extra"),
    [
        ("redis", "redis"),
        ("rediss", "redis"),
        ("postgresql+psycopg", "postgresql"),
        ("postgres", "postgresql"),
        ("mysql+pymysql", "mysql"),
        ("mariadb", "mysql"),
        ("sqlite", "sql"),
        ("mongodb", "mongo"),
        ("mongodb+srv", "mongo"),
    ],
)
def test_a_missing_store_names_the_extra_that_installs_it(scheme: str, extra: str) -> None:
    """The hint names the real extra of the meta-package, never a literal `[...]`."""
    from celery_saga.backends.registry import _not_found_message

    message = _not_found_message(scheme, {"memory": "celery_saga.backends.memory:X"})
    assert f'pip install "celery-saga[{extra}]"' in message
    assert "[...]" not in message


def test_register_adds_a_scheme_without_packaging() -> None:
    class Custom(MemorySagaBackend):
        pass

    register("custom", Custom)
    try:
        assert isinstance(backend_from_url("custom://anything"), Custom)
        assert backend_class("custom+driver") is Custom
    finally:
        from celery_saga.backends import registry

        registry._registered.pop("custom", None)
        registry._cache.clear()


def test_memory_urls_share_one_store_per_name() -> None:
    assert backend_from_url("memory://a") is backend_from_url("memory://a")
    assert backend_from_url("memory://a") is not backend_from_url("memory://b")


def test_backend_precedence_saga_then_app_then_default() -> None:
    from celery import Celery

    app = Celery("prec", broker="memory://", set_as_current=False)
    explicit = MemorySagaBackend()
    configured = MemorySagaBackend()
    default = MemorySagaBackend()
    set_default_backend(default)
    try:
        assert backend_for(app) is default
        app.conf.saga_backend = configured
        assert backend_for(app) is configured
        assert backend_for(app, explicit) is explicit
        app.conf.saga_backend = "memory://prec"
        assert backend_for(app) is backend_from_url("memory://prec")
    finally:
        set_default_backend(None)
    assert get_default_backend() is backend_from_url("memory://")
    with pytest.raises(BackendNotFound):
        set_default_backend("nosuch://")
    with pytest.raises(TypeError):
        set_default_backend(42)  # type: ignore[arg-type]


def test_lazy_backend_names_say_which_package_to_install() -> None:
    import celery_saga.backends as backends

    with pytest.raises(AttributeError):
        backends.NoSuchBackend  # noqa: B018
    import importlib.util

    for name, module, package in [
        ("RedisSagaBackend", "celery_saga_redis", "celery-saga-redis"),
        ("SQLSagaBackend", "celery_saga_sql", "celery-saga-sql"),
        ("MongoSagaBackend", "celery_saga_mongo", "celery-saga-mongo"),
    ]:
        if importlib.util.find_spec(module) is None:
            with pytest.raises(ImportError, match=f"pip install {package}"):
                getattr(backends, name)
        else:
            assert getattr(backends, name).__name__ == name


@pytest.mark.parametrize(
    ("deadline", "seconds"),
    [(90, 90.0), (1.5, 1.5), (timedelta(minutes=2), 120.0), (None, None)],
)
def test_a_saga_deadline_is_seconds_or_a_timedelta(deadline: object, seconds: float | None) -> None:
    from celery_saga import Saga

    assert Saga("deadline_kinds", deadline=deadline).deadline == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("deadline", [0, -1, "soon"])
def test_a_bad_saga_deadline_says_what_it_takes(deadline: object) -> None:
    from celery_saga import Saga
    from celery_saga.errors import SagaDefinitionError

    with pytest.raises(SagaDefinitionError, match="positive number of seconds"):
        Saga("bad_deadline", deadline=deadline)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("check", "index", "get_at", "alone"),
    [
        ((2,), 2, 1, True),  # a stage of this step alone, completed at count 1
        ((2,), 2, None, False),  # no count asked for
        ((2,), 2, 2, False),  # a count other than 1
        ((1, 2), 2, 1, False),  # a parallel stage counts in its counter
        ((3,), 2, 1, False),  # another step's stage
    ],
)
def test_a_write_counts_alone_only_for_a_stage_of_that_step(
    check: tuple[int, ...], index: int, get_at: int | None, alone: bool
) -> None:
    """`StartNext.counts_alone`: the rule the Redis and SQL stores count without a counter by."""
    start = StartNext(check=check, start=(9,), changes={9: {}})
    assert start.counts_alone(index, get_at) is alone
    assert StartNext.alone(index).counts_alone(index, 1)
    assert StartNext.alone(index).start == ()


@pytest.mark.parametrize(
    "value",
    [
        "text",
        'tâsk "quoted" \n',
        "",
        0,
        -3,
        2**70,
        1_717_171_717.1234567,
        0.1 + 0.2,
        None,
        True,
        False,
        SagaStatus.RUNNING,
        StepStatus.SUCCESS,
        StepKind.SAGA,
        {"a": [1, 2.5, None], "s": StepStatus.FAILED},
        [],
    ],
)
def test_compact_json_writes_what_json_dumps_writes(value: object) -> None:
    """The store's encoder (direct for strings, numbers, statuses and None) gives the
    text of ``json.dumps`` with compact separators, enum members as their values."""
    expected = json.dumps(value, separators=(",", ":"))
    assert compact_json(value) == expected
    assert json.loads(compact_json(value)) == plain_value(value)


def test_compact_json_refuses_what_json_refuses() -> None:
    """A value JSON cannot hold raises as ``json.dumps`` does; infinity is written as
    ``json.dumps`` writes it."""
    with pytest.raises(TypeError):
        compact_json({"x": object()})
    assert compact_json(float("inf")) == json.dumps(float("inf"), separators=(",", ":"))
