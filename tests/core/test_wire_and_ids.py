"""What a saga encodes and which ids it accepts: every failure is a clear, named error.

- `ensure_json` / `normalize_result` turn every way a value can fail to encode
  (type, NaN, depth, cycles, size, a failing serializer) into StepOutputError
  naming the value's owner; a step that returns such a value fails, and the saga
  compensates (eager mode, memory store, as in a user's unit tests).
- `validate_saga_id` accepts what `new_saga_id` makes and refuses anything else
  with a ValueError naming the value; `SagaResult` checks before the store is asked.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from pydantic import BaseModel, field_serializer

from celery_saga import (
    Saga,
    SagaCompensated,
    SagaResult,
    SagaStatus,
    StepOutputError,
    StepStatus,
    saga_step,
)
from celery_saga import response as response_module
from celery_saga.backends import MemorySagaBackend
from celery_saga.errors import InvalidSagaId
from celery_saga.headers import SagaHeader, current_step, idempotency_key
from celery_saga.ids import new_saga_id, validate_idempotency_key, validate_saga_id
from celery_saga.response import MAX_DEPTH, ensure_json, normalize_result

WHAT = "the output of step 3 (shop.charge)"


def nested(levels: int, leaf: Any = 1, *, kind: type = dict) -> Any:
    """A value with `levels` nested dicts (or lists) around `leaf`, built without recursion."""
    value = leaf
    for _ in range(levels):
        value = {"x": value} if kind is dict else [value]
    return value


def circular_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop", "items": []}
    value["items"].append({"parent": value})
    return value


def circular_list() -> list[Any]:
    value: list[Any] = [1, 2]
    value.append([value])
    return value


def shared_many_times(levels: int) -> list[Any]:
    """Two references to the level below at every level: 2**levels items once encoded."""
    value: list[Any] = [0]
    for _ in range(levels):
        value = [value, value]
    return value


class FailingItems(dict):  # type: ignore[type-arg]
    """A dict whose items() raises, as the json encoder calls it for dict subclasses."""

    def items(self) -> Any:
        raise RuntimeError("items() is broken")


_needs_int_limit = pytest.mark.skipif(
    not hasattr(sys, "set_int_max_str_digits"), reason="Python < 3.11 prints any integer"
)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(
            lambda: {"ok": [1, {"bad": {1, 2}}]},
            r"found a value of type set at \['ok'\]\[1\]\['bad'\]",
            id="set",
        ),
        pytest.param(object, "found a value of type object at the top level", id="object"),
        pytest.param(lambda: {"when": b"bytes"}, r"type bytes at \['when'\]", id="bytes"),
        pytest.param(lambda: {"n": float("nan")}, r"float \(nan\) at \['n'\].*no NaN", id="nan"),
        pytest.param(lambda: [0, float("-inf")], r"float \(-inf\) at \[1\]", id="infinity"),
        pytest.param(
            lambda: {(1, 2): "v"}, "found a key of type tuple at the top level", id="tuple key"
        ),
        pytest.param(
            lambda: {"a": {float("nan"): 1}}, r"key of type float \(nan\) at \['a'\]", id="nan key"
        ),
        pytest.param(
            lambda: {"big": 10**5000},
            "could not be encoded as JSON .*ValueError",
            id="integer too long",
            marks=_needs_int_limit,
        ),
        pytest.param(
            lambda: FailingItems(a=1),
            r"could not be encoded as JSON \(RuntimeError: items",
            id="broken",
        ),
        pytest.param(lambda: nested(100_000), f"more than {MAX_DEPTH} levels deep", id="deep dict"),
        pytest.param(
            lambda: nested(MAX_DEPTH + 1, kind=list),
            f"more than {MAX_DEPTH} levels deep",
            id="deep list",
        ),
        pytest.param(
            lambda: nested(100_000, leaf={1, 2}),
            f"more than {MAX_DEPTH} levels",
            id="deep, bad leaf",
        ),
        pytest.param(
            circular_dict,
            r"contains itself: .* at \['items'\]\[0\]\['parent'\]",
            id="cycle",
        ),
        pytest.param(circular_list, r"contains itself: .* at \[2\]\[0\]", id="list cycle"),
    ],
)
def test_ensure_json_turns_every_encoding_failure_into_a_named_step_output_error(
    make: Callable[[], Any], expected: str
) -> None:
    value = make()  # built here: a 100,000-deep value is not kept for the whole session
    with pytest.raises(StepOutputError, match=expected) as info:
        ensure_json(value, WHAT)
    message = str(info.value)
    assert message.startswith(WHAT)
    assert len(message) < 1000  # a deep or huge value is never spelled out


@pytest.mark.parametrize(
    "make",
    [lambda: nested(100_000), lambda: nested(100_000, kind=list), circular_dict, circular_list],
    ids=["deep dict", "deep list", "cycle", "list cycle"],
)
def test_deep_and_circular_values_are_refused_before_the_encoder_runs(
    make: Callable[[], Any],
) -> None:
    with pytest.raises(StepOutputError) as info:
        ensure_json(make(), WHAT)
    assert info.value.__context__ is None  # no RecursionError (or other) was caught on the way


def test_ensure_json_bounds_the_items_it_will_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response_module, "MAX_ITEMS", 1000)
    ensure_json(shared_many_times(8), WHAT)  # 510 items: fine
    with pytest.raises(StepOutputError, match=r"holds more than 1,000 items"):
        ensure_json(shared_many_times(40), WHAT)  # 2**41 items if it were encoded


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param("Ünïcode ✓", id="text"),
        pytest.param({"a": [1, 2.5, True, None], "b": (1, 2)}, id="mixed"),
        pytest.param({1: "int key", 2.5: "float key", None: "none key"}, id="scalar keys"),
        pytest.param(nested(MAX_DEPTH), id="exactly max depth"),
        pytest.param(nested(MAX_DEPTH - 1, leaf=[]), id="max depth ending in a list"),
        pytest.param({"same": [[1]] * 3}, id="shared, not circular"),
    ],
)
def test_ensure_json_encodes_what_json_can_encode(value: Any) -> None:
    assert ensure_json(value, WHAT) == json.dumps(value)


class Loop(BaseModel):
    data: Any


class Charge(BaseModel):
    amount: float

    @field_serializer("amount")
    def _no_amount(self, value: float) -> float:
        raise ValueError("amount cannot be shown")


class FakeModel:
    """Looks like a Pydantic model; its dump blows the stack."""

    model_fields: dict[str, Any] = {}

    def model_dump(self, mode: str = "python") -> Any:
        raise RecursionError("maximum recursion depth exceeded")


def _loop() -> Loop:
    data: dict[str, Any] = {}
    data["self"] = data
    return Loop(data=data)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(Charge(amount=1), "amount cannot be shown", id="serializer raises"),
        pytest.param(_loop(), "Circular reference", id="circular model"),
        pytest.param(FakeModel(), "RecursionError", id="recursion"),
    ],
)
def test_normalize_result_turns_conversion_failures_into_step_output_errors(
    value: Any, expected: str
) -> None:
    with pytest.raises(StepOutputError, match=expected) as info:
        normalize_result(value, WHAT)
    assert str(info.value).startswith(f"{WHAT} could not be converted to JSON data")
    with pytest.raises(StepOutputError, match=r"^the step's return value could not"):
        normalize_result(value)  # outside a task, without a name


# -- a step whose output cannot be stored fails, and the saga compensates (eager mode) --------


@pytest.fixture(params=[False, True], ids=["eager", "eager-propagates"])
def eager_app(request: pytest.FixtureRequest) -> Celery:
    app = Celery(f"wire-{uuid.uuid4().hex[:8]}", broker="memory://", set_as_current=False)
    app.conf.update(
        task_always_eager=True,
        task_eager_propagates=request.param,
        saga_backend=MemorySagaBackend(),
        saga_compensation_retry_backoff=0,
    )
    return app


def _saga_whose_second_step_returns(app: Celery, value: Any) -> tuple[Saga, list[Any]]:
    undone: list[Any] = []

    @app.task(shared=False, name="wire.release")
    def release(data: dict[str, Any]) -> None:
        undone.append(data)

    @saga_step(compensate=release)
    @app.task(shared=False, name="wire.reserve")
    def reserve(**kwargs: Any) -> dict[str, Any]:
        return {"reservation": "r-1"}

    @app.task(shared=False, name="wire.report")
    def report(**kwargs: Any) -> Any:
        return value()

    saga = Saga(app.main, app=app).add_step(reserve).add_step(report)
    return saga, undone


@pytest.mark.parametrize(
    ("make_value", "expected"),
    [
        pytest.param(
            lambda: nested(100_000),
            rf"^the output of step 1 \(wire\.report\) nests .* more than {MAX_DEPTH} levels",
            id="100,000 levels deep",
        ),
        pytest.param(
            circular_dict, r"^the output of step 1 \(wire\.report\) contains itself", id="cycle"
        ),
        pytest.param(
            lambda: Charge(amount=2),
            r"^the return value of step 1 \(wire\.report\) could not be converted",
            id="model that cannot dump",
        ),
    ],
)
def test_a_step_whose_output_cannot_be_stored_fails_and_the_saga_compensates(
    eager_app: Celery, make_value: Any, expected: str
) -> None:
    saga, undone = _saga_whose_second_step_returns(eager_app, make_value)
    result = saga.run(order="o-1")
    with pytest.raises(SagaCompensated):
        result.get(timeout=5)
    execution = result.execution
    assert execution is not None and execution.status is SagaStatus.COMPENSATED
    first, second = execution.steps
    assert second.status is StepStatus.FAILED
    assert second.error is not None
    assert len(second.error) < 1000
    assert re.search(expected, second.error), second.error
    assert second.output in ({}, None)
    assert first.status is StepStatus.COMPENSATED
    assert undone == [{"reservation": "r-1"}]


# -- saga ids and keys from outside -----------------------------------------------------------

SHAPE = "a saga id is a UUID as new_saga_id"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("\x00", "it contains a NUL byte at position 0", id="nul"),
        pytest.param(new_saga_id()[:-1] + "\x00", "NUL byte at position 35", id="nul at end"),
        pytest.param("\x1b[31m", r"the character '\\x1b' at position 0", id="escape"),
        pytest.param("\x85" * 36, r"the character '\\x85'", id="c1 control"),
        pytest.param(f" {uuid.uuid4()}", "the character ' ' at position 0", id="space"),
        pytest.param(f"{uuid.uuid4()}\n", r"the character '\\n' at position 36", id="newline"),
        pytest.param("", "it is empty", id="empty"),
        pytest.param("x" * 100_000, "it is 100000 characters long, not 36", id="long"),
        pytest.param("abc", "it is 3 characters long", id="short"),
        pytest.param("g" * 36, "it is not a UUID", id="not hex"),
        pytest.param("\u212a" * 36, "it is not a UUID", id="lowers to ascii"),
        pytest.param(None, "of type NoneType, not a string", id="none"),
        pytest.param(42, "of type int, not a string", id="int"),
        pytest.param(str(uuid.uuid4()).encode(), "of type bytes", id="bytes"),
        pytest.param({"$ne": None}, "of type dict", id="query object"),
    ],
)
def test_validate_saga_id_refuses_with_the_value_and_the_shape_of_an_id(
    value: Any, reason: str
) -> None:
    with pytest.raises(InvalidSagaId, match="is not a saga id") as info:
        validate_saga_id(value)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert re.search(reason, message), message
    assert SHAPE in message and "36 characters" in message
    assert len(message) < 400  # a huge value is cut, not echoed


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(new_saga_id, id="new_saga_id"),
        pytest.param(lambda: str(uuid.uuid4()), id="uuid4"),
        pytest.param(lambda: str(uuid.uuid1()), id="uuid1"),
        pytest.param(lambda: str(uuid.uuid4()).upper(), id="upper case"),
    ],
)
def test_validate_saga_id_accepts_what_new_saga_id_and_stored_records_use(make: Any) -> None:
    value = make()
    assert validate_saga_id(value) == value.lower()


def test_idempotency_keys_with_control_characters_are_refused_before_the_store() -> None:
    assert validate_idempotency_key("order-1234 ✓") == "order-1234 ✓"
    with pytest.raises(ValueError, match=r"control characters, got 'k\\x00' .* position 1"):
        validate_idempotency_key("k\x00")
    with pytest.raises(ValueError, match=r"at most 255 characters, got 'kkk.*\(1000 characters\)"):
        validate_idempotency_key("k" * 1000)


def test_header_with_a_malformed_saga_id_is_not_a_saga_header() -> None:
    header = SagaHeader(new_saga_id(), "s", 0, 1)
    assert SagaHeader.from_dict(header.to_dict()) == header
    for bad in ("\x00", "", "../x", 5):
        assert SagaHeader.from_dict({**header.to_dict(), "id": bad}) is None
    # Outside a task there is no current step (the Celery proxy is never None itself).
    assert current_step() is None
    assert idempotency_key() is None


class CountingStore(MemorySagaBackend):
    """A memory store that counts reads, to show a bad id never reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, saga_id: str) -> Any:
        self.reads.append(saga_id)
        return super().get(saga_id)


def test_saga_result_validates_the_id_before_the_store_sees_it() -> None:
    store = CountingStore()
    with pytest.raises(InvalidSagaId, match=r"'\\x00' is not a saga id: it contains a NUL") as info:
        SagaResult("\x00", store)
    assert isinstance(info.value, ValueError)
    assert store.reads == []
    unknown = SagaResult(new_saga_id(), store)
    assert unknown.status is None and unknown.execution is None
    assert store.reads == [unknown.saga_id, unknown.saga_id]


def test_saga_result_finds_an_execution_by_its_id_in_any_case(eager_app: Celery) -> None:
    saga, _ = _saga_whose_second_step_returns(eager_app, lambda: {"ok": 1})
    result = saga.run(order="o-2")
    assert result.status is SagaStatus.COMPLETED
    again = SagaResult(result.saga_id.upper(), result.backend)
    assert again.saga_id == result.saga_id
    assert again.status is SagaStatus.COMPLETED
    with pytest.raises(InvalidSagaId):
        saga.result(result.saga_id + "\x00")
