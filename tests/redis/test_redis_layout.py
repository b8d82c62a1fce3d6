"""The Redis store's hash layout: what a record is stored as, open and finished.

The conformance suite checks the contract; these check that the compact layout loses
nothing: every field of every step reads back exactly (user data and times that Lua's
cjson would round included) while the execution runs, once it has finished, and after
a finished execution is taken back to an active status; that a finish leaves only the
fields a reader needs; and that records stored by the layout before this one read back
the same and are written on.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from redis_support import previous_layout

from celery_saga.backends import Lease, StartNext, StepExpect
from celery_saga.ids import step_task_id
from celery_saga.models import SagaExecution, SagaStatus, StepKind, StepRecord, StepStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend

#: Seconds since the epoch with 17 significant digits: cjson would round them.
EXACT = 1_717_171_717.1234567
#: User data cjson would round (and a string that looks like the layout's own text).
DATA = {"id": 2**62 + 1, "r": 0.1 + 0.2, "s": '","a":9}', "nested": {"s": "success", "a": [1]}}


@pytest.fixture(params=["standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisSagaBackend]:
    name = "redis_store_url" if request.param == "standalone" else "redis_cluster_store_url"
    backend = RedisSagaBackend.from_url(request.getfixturevalue(name))
    yield backend
    backend.close()


def rich_execution() -> SagaExecution:
    """Three stages (the middle one a parallel pair), every kind of step field set."""
    execution = make_execution(stages=[0, 1, 1, 2], input={"order": DATA})
    sid = execution.saga_id
    execution.steps[0] = StepRecord(
        index=0,
        task_name="tasks.step0",
        stage=0,
        compensation_task_name="tasks.undo0",
        status=StepStatus.RUNNING,
        attempt=2,
        task_id=step_task_id(sid, 0, 2),
        retries=1,
        started_at=EXACT,
        lease_owner="host/7/tâsk",
        lease_expires_at=EXACT + 30,
        sent_at=EXACT - 1,
        sends=2,
        late={"1": {"state": "recorded", "output": DATA}},
        worker="celery@host",
        history=[{"part": "forward", "attempt": 1, "outcome": "retried", "at": EXACT}],
    )
    execution.steps[3].kind = StepKind.EXTERNAL.value
    execution.steps[3].no_compensation = True
    execution.steps[3].compensation_task_name = None
    return execution


def apply(execution: SagaExecution, index: int, changes: dict[str, Any]) -> None:
    """What a step write does to the record, in Python (the expectation)."""
    record = execution.step(index)
    for name, value in changes.items():
        setattr(record, name, StepStatus(value) if name == "status" else value)


def same(store: RedisSagaBackend, expected: SagaExecution) -> SagaExecution:
    """The stored execution, checked to equal `expected` but for `updated_at`."""
    got = store.get(expected.saga_id)
    assert got is not None
    assert got.to_dict() | {"updated_at": 0} == expected.to_dict() | {"updated_at": 0}
    return got


def test_every_field_reads_back_exactly_while_running_finished_and_reopened(
    store: RedisSagaBackend,
) -> None:
    expected = rich_execution()
    sid = expected.saga_id
    store.create(expected)
    same(store, expected)

    # The first stage succeeds: output and compensation data alike, the standard task id.
    done = {
        "status": StepStatus.SUCCESS,
        "output": DATA,
        "compensation_data": DATA,
        "finished_at": EXACT + 2,
        "error": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    start = {i: {"status": StepStatus.RUNNING, "attempt": 1, "task_id": step_task_id(sid, i, 1),
                 "started_at": EXACT + 3} for i in (1, 2)}  # fmt: skip
    write, read = store.update_step_and_get(
        sid, 0, done, expect=StepExpect(attempt=2), count_in="stage:0", get_at=1,
        start_next=StartNext(check=(0,), start=(1, 2), changes=start),
    )  # fmt: skip
    assert write.applied and write.started == (1, 2) and write.count == 1
    assert (write.status, write.lease_owner, write.lease_expires_at) == (
        StepStatus.SUCCESS,
        None,
        None,
    )
    apply(expected, 0, {**done, "seq": 1})
    for i in (1, 2):
        apply(expected, i, start[i])
    assert read is not None and read.to_dict() | {"updated_at": 0} == expected.to_dict() | {
        "updated_at": 0
    }
    same(store, expected)

    # The parallel pair: one succeeds with its own compensation data, one fails; a
    # member written twice keeps its last value.
    for i, changes in (
        (1, {"status": StepStatus.SUCCESS, "output": {"x": 1}, "compensation_data": {"u": EXACT}}),
        (2, {"error": "first", "retries": 1}),
        (2, {"status": StepStatus.FAILED, "error": 'boom\n"quoted"', "finished_at": EXACT}),
    ):
        count_in = "stage:1" if "status" in changes else None
        assert store.update_step(sid, i, changes, count_in=count_in).applied
        apply(expected, i, changes)
    expected.step(1).seq, expected.step(2).seq = 1, 2
    same(store, expected)
    # The last one's null: an absent member stays absent, a present one is cleared.
    assert store.update_step(sid, 2, {"error": None, "comp_error": None}).applied
    apply(expected, 2, {"error": None, "comp_error": None})
    same(store, expected)

    assert store.update_saga(sid, {"status": SagaStatus.FAILED, "finished_at": EXACT + 9})
    expected.status, expected.finished_at = SagaStatus.FAILED, EXACT + 9
    same(store, expected)
    assert not store.client.exists(store.keys.counters(sid))
    raw = store.client.hgetall(store.keys.execution(sid))
    assert set(raw) == {
        "h", "h:status", "h:created_at", "h:updated_at", "h:finished_at", "h:input",
        "s:0", "s:1", "s:2", "s:3", "s:0:l", "s:0:hi", "x",
    }  # fmt: skip
    assert raw["x"] == "1"  # it counted: the finish looked for the counters
    # Abbreviated, not lost: one output for both, the standard task id as its attempt.
    step0 = json.loads(raw["s:0"])
    assert step0["i"] == 2 and "oc" in step0 and "o" not in step0 and "cd" not in step0

    # Taken back to an active status (an operator's retry): written on as before.
    assert store.update_saga(sid, {"status": SagaStatus.COMPENSATING, "finished_at": None})
    expected.status, expected.finished_at = SagaStatus.COMPENSATING, None
    comp = {
        "status": StepStatus.COMPENSATING,
        "comp_attempt": 1,
        "comp_task_id": step_task_id(sid, 1, 1, compensation=True),
        "comp_started_at": EXACT + 10,
        "lease_owner": "h/1",
        "lease_expires_at": EXACT,
    }
    write = store.update_step(sid, 1, comp, expect=StepExpect(comp_attempt=0))
    assert write.applied and write.comp_attempt == 1
    apply(expected, 1, comp)
    assert store.renew_leases([Lease(sid, 1, "h/1", 1, compensation=True)], EXACT + 60) == []
    apply(expected, 1, {"lease_expires_at": EXACT + 60})
    same(store, expected)


def test_steps_of_any_number_keep_their_place(store: RedisSagaBackend) -> None:
    """Step 10 and step 1 are different fields, whatever order they are written in."""
    expected = make_execution(steps=12)
    store.create(expected)
    for i in (10, 1, 11, 0):
        changes = {"status": StepStatus.SUCCESS, "output": {"i": i}}
        assert store.update_step(expected.saga_id, i, changes, count_in=f"stage:{i}").applied
        apply(expected, i, {**changes, "seq": 1})
    assert store.update_saga(expected.saga_id, {"status": SagaStatus.COMPLETED})
    expected.status = SagaStatus.COMPLETED
    same(store, expected)


def test_a_record_of_the_previous_layout_reads_the_same_and_is_written_on(
    store: RedisSagaBackend,
) -> None:
    expected = rich_execution()
    sid = expected.saga_id
    fields = previous_layout(expected)
    assert "s:0:lease_owner" in fields and "status" in json.loads(fields["s:0"])
    store.client.hset(store.keys.execution(sid), mapping=fields)
    same(store, expected)

    # Its lease counts: another owner is refused, its owner renews it.
    t = EXACT + 1
    refused = store.update_step(
        sid, 0, {"retries": 5}, expect=StepExpect(lease_free_at=t, lease_holder="other")
    )
    assert not refused.applied and refused.lease_owner == "host/7/tâsk"
    assert store.renew_leases([Lease(sid, 0, "host/7/tâsk", 2)], EXACT + 90) == []
    apply(expected, 0, {"lease_expires_at": EXACT + 90})
    same(store, expected)
    late = store.record_late(sid, 0, 1, {"state": "compensating"}, expect_state="recorded")
    assert late.applied and late.attempt == 2
    expected.step(0).late = {"1": {"state": "compensating", "output": DATA}}
    same(store, expected)

    # A step written by this layout after one of the old: both read back.
    assert store.update_step(sid, 3, {"status": StepStatus.RUNNING, "attempt": 1}).applied
    apply(expected, 3, {"status": StepStatus.RUNNING, "attempt": 1})
    same(store, expected)
    assert store.update_saga(sid, {"status": SagaStatus.CANCELLED, "finished_at": EXACT})
    expected.status, expected.finished_at = SagaStatus.CANCELLED, EXACT
    same(store, expected)


def test_a_step_write_sends_and_writes_the_same_in_a_long_saga(store: RedisSagaBackend) -> None:
    """A step write is about that step only: what it sends and the object it rewrites
    are the same size in a 200-step saga as in a 5-step one."""
    sizes = []
    for length in (5, 200):
        execution = make_execution(steps=length)
        store.create(execution)
        store.stats.reset()
        changes = {"status": StepStatus.SUCCESS, "output": {}, "finished_at": EXACT}
        nxt = StartNext(check=(3,), start=(4,), changes={4: {"status": StepStatus.RUNNING}})
        write, _ = store.update_step_and_get(
            execution.saga_id, 3, changes, count_in="stage:3", get_at=1, start_next=nxt,
            read=False,
        )  # fmt: skip
        assert write.applied and write.started == (4,)
        raw = store.client.hget(store.keys.execution(execution.saga_id), "s:3")
        sizes.append((store.stats.bytes_written, len(raw)))
    assert sizes[0] == sizes[1]


def test_changes_read_back_in_the_order_they_were_written(store: RedisSagaBackend) -> None:
    """Shared output first, then each of the two alone, and back: the last write counts."""
    expected = make_execution()
    store.create(expected)
    sid = expected.saga_id
    for changes in (
        {"output": [1], "compensation_data": [1]},
        {"compensation_data": {"undo": 2}},
        {"output": None},
        {"output": "x", "compensation_data": "x"},
        {"task_id": "custom-id", "attempt": 3},
        {"task_id": step_task_id(sid, 0, 4), "attempt": 4},
        {"attempt": 5},
    ):
        assert store.update_step(sid, 0, changes).applied
        apply(expected, 0, changes)
        same(store, copy.deepcopy(expected))


def test_a_member_written_again_replaces_the_earlier_one_while_the_object_is_flat(
    store: RedisSagaBackend,
) -> None:
    """Without objects or arrays in it, a step object keeps one member per field (a null
    is no member at all); with one, members are appended and the last one counts."""
    expected = make_execution()
    store.create(expected)
    sid, key = expected.saga_id, store.keys.execution(expected.saga_id)

    def write(changes: dict[str, Any]) -> str:
        assert store.update_step(sid, 0, changes).applied
        apply(expected, 0, changes)
        same(store, expected)
        text: str = store.client.hget(key, "s:0")
        return text

    flats: list[dict[str, Any]] = [
        {"worker": "a", "started_at": EXACT, "error": 'x","w":"z'},
        {"worker": "b", "started_at": EXACT + 1},
        {"error": None, "retries": 2},
    ]
    for changes in flats:
        flat = write(changes)
    assert (flat.count('"w":'), flat.count('"sa":'), flat.count('"e":')) == (1, 1, 0)
    assert flat.count('"r":') == 1
    write({"output": {"k": [1]}, "compensation_data": None})
    nesteds: list[dict[str, Any]] = [{"worker": "c"}, {"error": "y"}, {"error": None}]
    for changes in nesteds:
        nested = write(changes)
    assert (nested.count('"w":'), nested.count('"e":')) == (2, 2)
    assert nested.endswith(',"e":null}')


def test_a_new_execution_encodes_the_same_with_its_untouched_steps_made_once() -> None:
    """`encode` reuses the fields of a step no one has run yet (they depend on its
    description alone), and encodes every other step itself: either way, the fields
    are those the step's own encoding gives."""
    from celery_saga_redis import layout

    first, second = make_execution(name="encoded"), make_execution(name="encoded")
    second.steps[0].status, second.steps[0].attempt = StepStatus.RUNNING, 1
    second.steps[0].task_id = step_task_id(second.saga_id, 0, 1)
    second.steps[0].started_at = 1_800_000_000.25
    second.steps[1].retries = 0.0  # equal to the default, not of its type: not reused
    for execution in (first, second, first):
        fields = layout.encode(execution)
        expected = [f for step in execution.steps for f in layout._step_fields("x", step)]
        if execution is second:
            expected[:2] = layout._step_fields(second.saga_id, second.steps[0])
        assert fields[-len(expected) :] == expected
    assert layout._step_fields(second.saga_id, second.steps[0])[1].startswith(
        '{"s":"running","a":1,"sa":1800000000.25'
    )
    assert (2, *(getattr(first.steps[2], n) for n in layout._DESCRIPTION[1:])) in layout._untouched


_SID = "5f0e3f4e-8a53-4a55-9d2c-6a1b0c3d4e5f"


@pytest.mark.parametrize(
    ("changes", "head", "members"),
    [
        # The output that is the compensation data (one object) is written once, as "oc".
        (
            {"status": StepStatus.SUCCESS, "output": DATA, "compensation_data": DATA},
            ["success", "", ""],
            ',"oc":' + json.dumps(DATA, separators=(",", ":")),
        ),
        # An equal copy is written once too; different data is written twice.
        (
            {"output": {"a": 1}, "compensation_data": {"a": 1}},
            ["", "", ""],
            ',"oc":{"a":1}',
        ),
        (
            {"output": {"a": 1}, "compensation_data": {"a": 2}},
            ["", "", ""],
            ',"o":{"a":1},"cd":{"a":2}',
        ),
        # None for both (one object): both members, null.
        (
            {"output": None, "compensation_data": None, "attempt": 3},
            ["", 3, ""],
            ',"o":null,"cd":null',
        ),
        # started_at comes first; a task id the attempt gives is written as the attempt.
        (
            {
                "status": StepStatus.RUNNING,
                "attempt": 2,
                "task_id": step_task_id(_SID, 1, 2),
                "started_at": EXACT,
            },
            ["running", 2, ""],
            f',"sa":{EXACT!r},"i":2',
        ),
        (
            {"comp_attempt": 1, "status": StepStatus.COMPENSATING},
            ["compensating", "", 1],
            "",
        ),
    ],
)
def test_a_step_write_encodes_its_changes_as_the_layout_says(
    changes: dict[str, Any], head: list[Any], members: str
) -> None:
    """`StepChanges`: the head's new values (status name, attempt numbers), and the
    members appended to the step's object, abbreviated as the layout says."""
    from celery_saga_redis import layout

    step = layout.StepChanges(_SID, 1, changes)
    assert step.head == head
    assert [type(v) for v in step.head] == [type(v) for v in head]
    assert step.members == members
    assert step.started == (len(f',"sa":{EXACT!r}') if "started_at" in changes else 0)
