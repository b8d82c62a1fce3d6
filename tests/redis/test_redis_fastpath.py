"""The fast step write (STEP_FAST, FINISH_FAST): which writes take it, and that each
writes and reports exactly what the general scripts (UPDATE_STEP, FINISH_STEP) do, on
every stored state, the ones where it must step aside included."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from celery_saga.backends import StartNext, StepExpect, StepWrite
from celery_saga.ids import step_task_id
from celery_saga.models import SagaExecution, SagaStatus, StepStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend, fastpath

T0 = 1_717_171_717.1234567
_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


def started(saga_id: str, index: int) -> dict[str, Any]:
    """What the runtime writes when it starts a step (`messages.start_changes`)."""
    return {
        "status": StepStatus.RUNNING,
        "attempt": 1,
        "task_id": step_task_id(saga_id, index, 1),
        "started_at": T0 + index,
    }


def success(index: int, attempt: int = 1) -> dict[str, Any]:
    """What a worker writes when step `index` succeeded (`forward.step_succeeded`)."""
    output = {"n": index, "big": 2**62 + 1}
    return {
        "status": StepStatus.SUCCESS,
        "output": output,
        "compensation_data": output,
        "finished_at": T0 + 10 + index,
        "error": None,
        "attempt": attempt,
        "worker": "celery@host",
        "started_at": T0 + 5 + index,
    }


def execution(steps: int = 3) -> SagaExecution:
    """A running saga of `steps` stages of one step, its first step started (as `run`)."""
    made = make_execution(steps=steps)
    for name, value in started(made.saga_id, 0).items():
        setattr(made.steps[0], name, value)
    return made


# -- which writes take the fast path (a pure function of the write's arguments) -----------

_NEXT = StartNext(check=(0,), start=(1,), changes={1: {"status": StepStatus.RUNNING}})

PLANS: list[tuple[str, dict[str, Any], bool]] = [
    ("a step's success that starts the next stage of one step", {}, True),
    ("a step's success that ends the saga", {"start_next": StartNext.alone(0)}, True),
    ("a write that counts nothing", {"count_in": None, "get_at": None, "start_next": None}, True),
    ("a stage of two steps (a counter)", {"start_next": StartNext((0, 1), (2,), {})}, False),
    ("a next stage of two steps", {"start_next": StartNext((0,), (1, 2), {})}, False),
    ("a write that reads the execution back", {"read": True}, False),
    ("a count with no stage to complete", {"get_at": None}, False),
    ("a lease condition", {"expect": StepExpect(status=_FORWARD, lease_owners=["w"])}, False),
    ("a comp_attempt condition", {"expect": StepExpect(status=_FORWARD, comp_attempt=0)}, False),
    ("no attempt condition", {"expect": StepExpect(status=_FORWARD)}, False),
    ("no status condition", {"expect": StepExpect(attempt=1)}, False),
    ("a step that must be SUCCESS", {"expect": StepExpect(status={StepStatus.SUCCESS})}, False),
    ("a saga that must be compensating", {"saga": {SagaStatus.COMPENSATING}}, False),
    ("a field apart (the lease)", {"changes": {"lease_owner": "w"}}, False),
    ("comp_attempt written", {"changes": {"comp_attempt": 1}}, False),
    ("two members set to null", {"changes": {"error": None, "worker": None}}, False),
]


@pytest.mark.parametrize(("what", "given", "fast"), PLANS, ids=[p[0] for p in PLANS])
def test_which_writes_take_the_fast_path(what: str, given: dict[str, Any], fast: bool) -> None:
    args: dict[str, Any] = {
        "changes": success(0),
        "expect": StepExpect(status=_FORWARD, attempt_at_most=1),
        "count_in": "stage:0",
        "get_at": 1,
        "read": False,
        "start_next": _NEXT,
    }
    saga = given.pop("saga", None)
    changes = given.pop("changes", None)
    args.update(given)
    if saga is not None:
        args["expect"] = StepExpect(status=_FORWARD, attempt_at_most=1, saga_status=saga)
    if changes is not None:
        args["changes"] = {"status": StepStatus.SUCCESS, **changes}
    planned = fastpath.plan(
        "s-1", 0, args["changes"], args["expect"], args["count_in"], args["get_at"],
        args["read"], args["start_next"],
    )  # fmt: skip
    assert (planned is not None) is fast, what


def test_a_planned_write_says_what_it_expects_and_starts() -> None:
    planned = fastpath.plan(
        "s-1", 0, success(0), StepExpect(status=_FORWARD, attempt_at_most=1), "stage:0", 1,
        False, _NEXT,
    )  # fmt: skip
    assert planned is not None
    assert (planned.status, planned.attempt, planned.count, planned.started) == (
        "running", 1, 1, (1,),
    )  # fmt: skip
    # now, the saga status needed, then each step: index, its head and its new head,
    # started_at (first, to go right after the head), the other members, a null's start.
    assert planned.args[1:5] == ['"running"', 0, '{"s":"running","a":1', '{"s":"success","a":1']
    assert planned.args[5] == f',"sa":{T0 + 5}'
    assert planned.args[6].endswith(',"q":1') and '"sa"' not in planned.args[6]
    assert planned.args[7] == ',"e":'
    assert planned.args[8:10] == [1, '{"s":"pending","a":0']
    failed = fastpath.plan(
        "s-1", 0, {"status": StepStatus.FAILED, "error": "x"},
        StepExpect(status=_FORWARD, attempt_at_most=1), "stage:0", 1, False, _NEXT,
    )  # fmt: skip
    assert failed is not None and failed.started == () and len(failed.args) == 8


# -- the fast path writes what the general one does ----------------------------------------


@dataclass
class Pair:
    """Two stores on one server (prefixes of their own), the same executions in both:
    `fast` takes the fast path where it can, `general` never does."""

    fast: RedisSagaBackend
    general: RedisSagaBackend
    #: Each fast call's reply: 0 when the script stepped aside.
    replies: list[Any] = field(default_factory=list)

    def both(self, call: Callable[[RedisSagaBackend], Any]) -> tuple[Any, Any]:
        return call(self.fast), call(self.general)

    def same(self, saga_id: str) -> SagaExecution:
        fast, general = self.both(lambda s: s.get(saga_id))
        assert fast is not None and general is not None
        assert fast.to_dict() | {"updated_at": 0} == general.to_dict() | {"updated_at": 0}
        return fast  # type: ignore[no-any-return]


@pytest.fixture(params=["standalone", "cluster"])
def pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    name = "redis_store_url" if request.param == "standalone" else "redis_cluster_store_url"
    url: str = request.getfixturevalue(name)
    # The prefix is the URL's last option: each store's keys stay under the fixture's.
    fast = RedisSagaBackend.from_url(f"{url}fast:")
    general = RedisSagaBackend.from_url(f"{url}general:")
    made = Pair(fast, general)
    real = fast._steps._fast_script

    def spy(*args: Any, **kwargs: Any) -> Any:
        reply = real(*args, **kwargs)
        made.replies.append(reply)
        return reply

    monkeypatch.setattr(fast._steps, "_fast_script", spy)
    monkeypatch.setattr(general._steps, "_fast_script", lambda *args, **kwargs: 0)
    try:
        yield made
    finally:
        fast.close()
        general.close()


#: Writes that put the saga or its steps in a state before the write under test:
#: (what, [(step index or None for the saga, changes)], whether the fast path applies).
STATES: list[tuple[str, list[tuple[int | None, dict[str, Any]]], bool]] = [
    ("as started", [], True),
    ("an output with an object written before", [(0, {"output": {"k": [1]}})], True),
    ("an error written before (set to null now)", [(0, {"error": "boom"})], True),
    ("a started_at written by a general write", [(0, {"started_at": T0 - 9, "worker": "x"})], True),
    ("a task id and flat members only", [(0, {"retries": 2, "sent_at": T0})], True),
    ("a comp_attempt", [(0, {"comp_attempt": 1})], False),
    ("a lower attempt stored", [(0, {"attempt": 0, "status": StepStatus.PENDING})], False),
    ("the next step already running", [(1, started("", 1) | {"task_id": "t"})], False),
    ("the next step with an attempt", [(1, {"attempt": 1})], False),
    ("the saga compensating", [(None, {"status": SagaStatus.COMPENSATING})], False),
    ("the step failed already", [(0, {"status": StepStatus.FAILED})], False),
]


@pytest.mark.parametrize(("what", "before", "fast"), STATES, ids=[s[0] for s in STATES])
def test_a_success_that_starts_the_next_stage_writes_what_the_general_script_does(
    pair: Pair, what: str, before: list[tuple[int | None, dict[str, Any]]], fast: bool
) -> None:
    made = execution()
    sid = made.saga_id
    pair.both(lambda s: s.create(copy.deepcopy(made)))
    for index, changes in before:
        if index is None:
            pair.both(lambda s, c=changes: s.update_saga(sid, c))  # type: ignore[misc]
        else:
            pair.both(lambda s, i=index, c=changes: s.update_step(sid, i, c))  # type: ignore[misc]
    pair.same(sid)

    def write(store: RedisSagaBackend) -> tuple[StepWrite, SagaExecution | None]:
        return store.update_step_and_get(
            sid, 0, success(0), expect=StepExpect(status=_FORWARD, attempt_at_most=1),
            count_in="stage:0", get_at=1, read=False,
            start_next=StartNext((0,), (1,), {1: started(sid, 1)}),
        )  # fmt: skip

    (fast_write, fast_read), (general_write, general_read) = pair.both(write)
    assert pair.replies and bool(pair.replies[-1]) is fast, what
    assert fast_write == general_write
    assert fast_read is None and general_read is None
    stored = pair.same(sid)
    if fast:
        assert fast_write.applied and fast_write.started == (1,) and fast_write.count == 1
        assert stored.step(0).started_at == T0 + 5 and stored.step(0).error is None
        assert stored.step(0).output == {"n": 0, "big": 2**62 + 1}
        assert stored.step(1).status is StepStatus.RUNNING


def test_a_success_that_ends_the_saga_writes_what_the_general_script_does(pair: Pair) -> None:
    made = execution(steps=1)
    sid = made.saga_id
    pair.both(lambda s: s.create(copy.deepcopy(made)))
    ends = {"status": SagaStatus.COMPLETED, "output": {"done": 1}, "finished_at": T0 + 20}

    def write(store: RedisSagaBackend) -> tuple[StepWrite, bool]:
        return store.update_step_and_finish(
            sid, 0, success(0), ends,
            expect=StepExpect(status=_FORWARD, attempt_at_most=1), count_in="stage:0",
        )  # fmt: skip

    (fast_write, fast_ended), (general_write, general_ended) = pair.both(write)
    if not pair.fast.cluster:  # a cluster ends the saga with a status change of its own
        assert pair.replies and pair.replies[-1]
    assert fast_write == general_write and fast_ended == general_ended
    stored = pair.same(sid)
    assert stored.status is SagaStatus.COMPLETED and stored.output == {"done": 1}
    assert pair.fast.wait(sid, 1) is not None


def test_a_step_written_twice_by_the_fast_path_keeps_one_started_at(pair: Pair) -> None:
    """The start puts started_at right after the head, the end replaces it there: the
    finished record holds each member once, as compact as the general write's."""
    made = execution()
    sid = made.saga_id
    pair.both(lambda s: s.create(copy.deepcopy(made)))
    for index in range(3):
        nxt = StartNext((index,), (index + 1,), {index + 1: started(sid, index + 1)})

        def write(store: RedisSagaBackend, i: int = index, n: StartNext = nxt) -> StepWrite:
            return store.update_step_and_get(
                sid, i, success(i), expect=StepExpect(status=_FORWARD, attempt_at_most=1),
                count_in=f"stage:{i}", get_at=1, read=False,
                start_next=n if i < 2 else StartNext.alone(i),
            )[0]  # fmt: skip

        fast, general = pair.both(write)
        assert fast == general and fast.applied
    assert all(pair.replies)
    pair.same(sid)
    for index in range(3):
        text: str = pair.fast.client.hget(pair.fast.keys.execution(sid), f"s:{index}")
        assert text.startswith('{"s":"success","a":1,"sa":'), text
        assert text.count('"sa":') == 1 and text.count('"i":') == 1, text
