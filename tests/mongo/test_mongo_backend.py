"""MongoDB store behaviour beyond the shared contract, on a real server.

What is checked here: ids and names are bound as values (operator injection is
refused), a step write sends and returns O(that step) and leaves other steps
alone, compare-and-set (lease conditions included) agrees with `StepExpect.refusal`,
payloads survive as exact JSON, round trips per operation, lease renewal in one
command, late successes by one conditional write, and `wait` with and without
change streams.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import bson
import pytest
from pymongo import monitoring

from celery_saga.backends import Lease, StepExpect
from celery_saga.errors import InvalidSagaId, SchemaVersionError
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing import make_execution
from celery_saga_mongo import MongoSagaBackend

_FORWARD = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


class Commands(monitoring.CommandListener):
    """Records every command the client sends, with its reply."""

    def __init__(self) -> None:
        self.sent: list[monitoring.CommandStartedEvent] = []
        self.replies: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.sent.append(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            self.replies[event.request_id] = dict(event.reply)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[monitoring.CommandStartedEvent]:
        with self._lock:
            return [e for e in self.sent if e.command_name == name]

    def clear(self) -> None:
        with self._lock:
            self.sent.clear()
            self.replies.clear()


@pytest.fixture
def watched(make_store: Callable[..., MongoSagaBackend]) -> tuple[MongoSagaBackend, Commands]:
    """A store whose client reports every command to a listener."""
    listener = Commands()
    store = make_store(event_listeners=[listener])
    store.get(str(uuid.uuid4()))  # first use: server check and indexes
    listener.clear()
    store.stats.reset()
    return store, listener


# -- injection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"$ne": None}, {"$gt": ""}, ["x"], 7, None, "", "$where", "a\x00b"]
)
def test_operator_shaped_ids_are_refused_before_any_query(
    watched: tuple[MongoSagaBackend, Commands], bad: Any
) -> None:
    store, commands = watched
    execution = make_execution(idempotency_key="real-key")
    store.create(execution)
    commands.clear()
    with pytest.raises(InvalidSagaId):
        store.get(bad)
    with pytest.raises(InvalidSagaId):
        store.update_saga(bad, {"status": SagaStatus.FAILED})
    with pytest.raises(InvalidSagaId):
        store.update_step(bad, 0, {"error": "x"})
    with pytest.raises(InvalidSagaId):
        store.delete(bad)
    with pytest.raises(InvalidSagaId):
        store.wait(bad, timeout=0.01)
    with pytest.raises(ValueError, match="idempotency key"):
        store.find_by_idempotency_key(bad)
    if bad is not None:  # name=None means "any name"
        with pytest.raises(ValueError, match="saga name"):
            store.list(name=bad)
    assert commands.sent == []  # refused before anything reached the server
    got = store.get(execution.saga_id)
    assert got is not None
    assert got.status is SagaStatus.RUNNING
    assert got.step(0).error is None


def test_ne_none_does_not_match_every_execution(mongo_store: MongoSagaBackend) -> None:
    """The classic injection: ``{"$ne": None}`` as an id would match any document."""
    mongo_store.create(make_execution(idempotency_key="k1"))
    with pytest.raises(InvalidSagaId, match="not a string"):
        mongo_store.get({"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a string"):
        mongo_store.find_by_idempotency_key({"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a string"):
        mongo_store.list(name={"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="number"):
        mongo_store.list(created_before={"$gt": 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="number"):
        mongo_store.purge({"$gt": 0})  # type: ignore[arg-type]


def test_create_refuses_operator_shaped_names_and_keys(mongo_store: MongoSagaBackend) -> None:
    with pytest.raises(ValueError, match="saga name"):
        mongo_store.create(make_execution(name="$where"))
    with pytest.raises(ValueError, match="idempotency key"):
        mongo_store.create(make_execution(idempotency_key={"$gt": ""}))  # type: ignore[arg-type]
    bad_id = make_execution()
    bad_id.saga_id = {"$ne": None}  # type: ignore[assignment]
    with pytest.raises(InvalidSagaId):
        mongo_store.create(bad_id)
    assert mongo_store.list(limit=10).items == []


def test_step_index_and_counter_names_cannot_escape_their_path(
    mongo_store: MongoSagaBackend,
) -> None:
    execution = make_execution(stages=[0, 0, 0])
    mongo_store.create(execution)
    sid = execution.saga_id
    with pytest.raises(TypeError):
        mongo_store.update_step(sid, "0.status", {"error": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mongo_store.update_step(sid, True, {"error": "x"})  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        mongo_store.update_step(sid, -1, {"error": "x"})
    with pytest.raises(KeyError):
        mongo_store.update_step(sid, 3, {"error": "x"})
    # Counter names are escaped, so these are three different counters.
    names = ["a.b", "a%2Eb", "$inc"]
    counts = [mongo_store.update_step(sid, i, {}, count_in=n).count for i, n in enumerate(names)]
    assert counts == [1, 1, 1]
    assert mongo_store.update_step(sid, 0, {}, count_in="a.b").count == 2
    raw = mongo_store.executions.find_one({"_id": sid})
    assert raw is not None
    assert raw["counters"] == {"a%2Eb": 2, "a%252Eb": 1, "%24inc": 1}


def test_operator_shaped_values_are_stored_not_evaluated(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution(stages=[0, 0])
    mongo_store.create(execution)
    sid = execution.saga_id
    for count_in in (None, "s"):  # the $set path and the pipeline path
        index = 0 if count_in is None else 1
        write = mongo_store.update_step(
            sid,
            index,
            {"error": "$status", "task_id": "$$ROOT", "comp_error": "$literal"},
            count_in=count_in,
        )
        assert write.applied
        step = mongo_store.get(sid).step(index)  # type: ignore[union-attr]
        assert (step.error, step.task_id, step.comp_error) == ("$status", "$$ROOT", "$literal")
    assert mongo_store.update_saga(sid, {"error": "$steps", "output": {"$set": {"a": 1}}})
    got = mongo_store.get(sid)
    assert got is not None
    assert got.error == "$steps"
    assert got.output == {"$set": {"a": 1}}


# -- payloads ----------------------------------------------------------------------------------

AWKWARD = {
    "huge": 2**64 + 1,
    "negative_huge": -(2**70),
    "max": 2**63 - 1,
    "dotted.key": 1,
    "$dollar": {"$in": [1, 2]},
    "float": 0.1 + 0.2,
    "text": "zażółć 🎉 \u0000 nul",
    "nested": [{"": None}, [True, False], {"a.b": {"$c": []}}],
}


def test_payloads_round_trip_exactly_as_json(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution(stages=[0, 0], input=AWKWARD)
    mongo_store.create(execution)
    sid = execution.saga_id
    mongo_store.update_step(sid, 0, {"output": AWKWARD, "compensation_data": [AWKWARD]})
    mongo_store.update_step(
        sid, 1, {"output": [AWKWARD], "compensation_data": AWKWARD}, count_in="stage:0"
    )
    mongo_store.update_saga(sid, {"output": {"all": AWKWARD}})
    got = mongo_store.get(sid)
    assert got is not None
    assert got.input == AWKWARD
    assert got.step(0).output == AWKWARD
    assert got.step(0).compensation_data == [AWKWARD]
    assert got.step(1).output == [AWKWARD]
    assert got.step(1).compensation_data == AWKWARD
    assert got.output == {"all": AWKWARD}


def test_payloads_are_json_text_and_structure_is_native(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution(input={"n": 1})
    mongo_store.create(execution)
    mongo_store.update_step(execution.saga_id, 0, {"output": {"x": 1}, "attempt": 2})
    raw = mongo_store.executions.find_one({"_id": execution.saga_id})
    assert raw is not None
    assert raw["input"] == '{"n":1}'
    assert raw["output"] is None
    assert raw["steps"][0]["output"] == '{"x":1}'
    assert raw["steps"][0]["attempt"] == 2
    assert raw["status"] == "running"
    assert isinstance(raw["created_at"], float)


def test_unserializable_payload_is_refused_clearly(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution()
    mongo_store.create(execution)
    with pytest.raises(TypeError, match="JSON-serializable"):
        mongo_store.update_step(execution.saga_id, 0, {"output": {"when": object()}})


def test_newer_schema_is_refused_on_read(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution()
    mongo_store.create(execution)
    mongo_store.executions.update_one({"_id": execution.saga_id}, {"$set": {"schema": 99}})
    with pytest.raises(SchemaVersionError, match="upgrade"):
        mongo_store.get(execution.saga_id)


# -- step writes are O(step) -------------------------------------------------------------------


def _big_execution(store: MongoSagaBackend, steps: int = 30) -> str:
    execution = make_execution(stages=[0] * steps)
    store.create(execution)
    for index in range(steps):
        store.update_step(execution.saga_id, index, {"output": {"blob": "x" * 20_000}})
    return execution.saga_id


@pytest.mark.parametrize("count_in", [None, "stage:0"])
def test_a_step_write_sends_and_reads_back_only_that_step(
    watched: tuple[MongoSagaBackend, Commands], count_in: str | None
) -> None:
    store, commands = watched
    sid = _big_execution(store)  # ~600 kB of other steps' outputs
    commands.clear()
    write = store.update_step(
        sid,
        7,
        {"status": StepStatus.SUCCESS, "output": {"ok": True}},
        expect=StepExpect(status=_FORWARD),
        count_in=count_in,
    )
    assert write.applied
    assert write.count == (1 if count_in else None)
    sent = commands.named("findAndModify")
    assert len(commands.sent) == 1
    assert len(sent) == 1
    command = sent[0].command
    assert len(bson.encode(command)) < 2_000
    reply = commands.replies[sent[0].request_id]
    assert len(bson.encode(reply["value"])) < 200  # only the state a StepWrite reports
    update = command["update"]
    if count_in is None:
        assert set(update) == {"$set"}
        assert set(update["$set"]) == {"steps.7.status", "steps.7.output", "updated_at"}
    else:
        assert isinstance(update, list)
        assert len(update) == 2
    got = store.get(sid)
    assert got is not None
    assert got.step(7).output == {"ok": True}
    assert all(got.step(i).output == {"blob": "x" * 20_000} for i in range(30) if i != 7)


def test_a_step_write_keeps_what_others_wrote_meanwhile(mongo_store: MongoSagaBackend) -> None:
    """Writers of different steps never overwrite each other (no whole-record writes)."""
    size = 16
    execution = make_execution(stages=[0] * size)
    mongo_store.create(execution)
    sid = execution.saga_id
    # Someone else changes step 0 directly in the database ...
    mongo_store.executions.update_one({"_id": sid}, {"$set": {"steps.0.error": "sentinel"}})
    # ... and concurrent writers each change their own step, half through the pipeline.
    barrier = threading.Barrier(size - 1)

    def write(index: int) -> None:
        barrier.wait()
        for round_ in range(5):
            mongo_store.update_step(
                sid,
                index,
                {"output": {"by": index, "round": round_}},
                count_in="c" if index % 2 else None,
            )

    threads = [threading.Thread(target=write, args=(i,)) for i in range(1, size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = mongo_store.get(sid)
    assert got is not None
    assert got.step(0).error == "sentinel"
    assert [got.step(i).output for i in range(1, size)] == [
        {"by": i, "round": 4} for i in range(1, size)
    ]
    counted = sorted(got.step(i).seq for i in range(1, size, 2))  # type: ignore[type-var]
    assert counted[-1] == 5 * len(counted)
    assert len(set(counted)) == len(counted)


# -- round trips -------------------------------------------------------------------------------


def test_round_trips_per_operation(watched: tuple[MongoSagaBackend, Commands]) -> None:
    store, commands = watched

    def cost(call: Callable[[], Any]) -> tuple[int, int]:
        commands.clear()
        store.stats.reset()
        call()
        return store.stats.round_trips, len(commands.sent)

    execution = make_execution()
    sid = execution.saga_id
    assert cost(lambda: store.create(execution)) == (1, 1)
    assert cost(lambda: store.get(sid)) == (1, 1)
    running = {"status": StepStatus.RUNNING, "attempt": 1}
    expect = StepExpect(status=frozenset({StepStatus.PENDING}))
    assert cost(lambda: store.update_step(sid, 0, running, expect=expect)) == (1, 1)
    done = {"status": StepStatus.SUCCESS}
    assert cost(lambda: store.update_step(sid, 0, done, count_in="stage:0")) == (1, 1)
    # Refused: one write, one read to report why.
    assert cost(lambda: store.update_step(sid, 0, done, expect=expect)) == (2, 2)
    assert cost(lambda: store.update_saga(sid, {"error": "e"})) == (1, 1)
    assert cost(lambda: store.list(status="running", limit=5)) == (1, 1)
    store.update_saga(sid, {"status": SagaStatus.COMPLETED})
    assert cost(lambda: store.delete(sid)) == (1, 1)
    assert cost(lambda: store.purge(time.time())) == (1, 1)
    assert store.stats.bytes_written == 0


def test_the_member_that_completes_a_stage_reads_the_execution_in_the_same_command(
    watched: tuple[MongoSagaBackend, Commands],
) -> None:
    store, commands = watched
    execution = make_execution(stages=[0, 0, 1])
    store.create(execution)
    sid = execution.saga_id
    done = {"status": StepStatus.SUCCESS, "output": {"n": 1}}
    commands.clear()
    store.stats.reset()
    first, none = store.update_step_and_get(sid, 0, done, count_in="stage:0", get_at=2)
    assert first.applied and first.count == 1 and none is None
    last, whole = store.update_step_and_get(sid, 1, done, count_in="stage:0", get_at=2)
    assert last.applied and last.count == 2
    assert whole is not None and whole == store.get(sid)
    assert [s.status for s in whole.steps[:2]] == [StepStatus.SUCCESS, StepStatus.SUCCESS]
    assert whole.steps[1].seq == 2 and whole.steps[1].output == {"n": 1}
    assert store.stats.round_trips == 3 and len(commands.named("findAndModify")) == 2
    # A write that is refused reads nothing, even with the counter at `get_at`.
    expect = StepExpect(status=_FORWARD)
    refused, nothing = store.update_step_and_get(
        sid, 1, done, expect=expect, count_in="stage:0", get_at=2
    )
    assert not refused.applied and nothing is None
    # Without a counter there is nothing to reach.
    plain, nothing = store.update_step_and_get(sid, 2, {"error": "e"}, get_at=0)
    assert plain.applied and nothing is None


def test_completing_a_stage_can_mark_the_next_one_started(mongo_store: MongoSagaBackend) -> None:
    from celery_saga.backends.base import StartNext

    execution = make_execution(stages=[0, 1, 1])
    mongo_store.create(execution)
    sid = execution.saga_id
    started = {"status": StepStatus.RUNNING, "attempt": 1}
    start_next = StartNext(check=(0,), start=(1, 2), changes={1: started, 2: started})
    write, whole = mongo_store.update_step_and_get(
        sid, 0, {"status": StepStatus.SUCCESS}, count_in="stage:0", get_at=1, start_next=start_next
    )
    assert write.applied and whole is not None
    stored = mongo_store.get(sid)
    assert stored is not None and whole.steps == stored.steps
    assert [(s.status, s.attempt) for s in whole.steps[1:]] == [(StepStatus.RUNNING, 1)] * 2


def test_listing_reads_the_span_that_filled_its_last_page_then_the_rest(
    watched: tuple[MongoSagaBackend, Commands],
) -> None:
    store, commands = watched
    base = time.time() - 10_000
    made = []
    # Ten old executions, then a burst of twenty recent ones (ties on created_at).
    for i in range(30):
        at = base + i if i < 10 else base + 9_000 + (i - 10) // 2
        execution = make_execution(name="span", created_at=at)
        store.create(execution)
        made.append(execution)
    expected = [
        e.saga_id for e in sorted(made, key=lambda e: (e.created_at, e.saga_id), reverse=True)
    ]

    def walk(limit: int) -> tuple[list[str], list[int]]:
        seen: list[str] = []
        trips: list[int] = []
        cursor = None
        while True:
            store.stats.reset()
            page = store.list(name="span", limit=limit, cursor=cursor)
            trips.append(store.stats.round_trips)
            seen += [s.saga_id for s in page.items]
            cursor = page.cursor
            if cursor is None:
                return seen, trips

    for limit in (4, 7, 30, 50, 4):
        seen, trips = walk(limit)
        assert seen == expected
        # The learned span, the rest of the range, and once more when ties on the
        # cursor's created_at filled the batch.
        assert max(trips) <= 3
    # Once learned, the span that filled the newest page is all the next one reads.
    store.list(name="span", limit=3)
    commands.clear()
    page = store.list(name="span", limit=3)
    assert [s.saga_id for s in page.items] == expected[:3]
    assert len(commands.named("find")) == 1
    assert store.list(name="span", created_after=base + 5, limit=50).items[-1].saga_id == (
        made[6].saga_id
    )
    assert [s.saga_id for s in store.list(name="span", created_before=base + 2).items] == [
        made[1].saga_id,
        made[0].saga_id,
    ]


def test_bytes_written_count_the_changes_only(watched: tuple[MongoSagaBackend, Commands]) -> None:
    store, _ = watched
    sid = _big_execution(store, steps=5)
    store.stats.reset()
    store.update_step(sid, 1, {"error": "abc"})
    assert store.stats.bytes_written == len("error") + len("abc")


# -- compare-and-set agrees with the contract --------------------------------------------------

_STATES = list(
    itertools.product([StepStatus.PENDING, StepStatus.RUNNING, StepStatus.SUCCESS], [0, 2], [0, 1])
)
_EXPECTS = [
    StepExpect(),
    StepExpect(status=_FORWARD),
    StepExpect(status=frozenset({StepStatus.SUCCESS})),
    StepExpect(status=frozenset()),
    StepExpect(attempt=0),
    StepExpect(attempt=2),
    StepExpect(attempt_at_most=1),
    StepExpect(attempt_at_most=2),
    StepExpect(attempt=2, attempt_at_most=1),
    StepExpect(comp_attempt=1),
    StepExpect(comp_attempt_at_most=0),
    StepExpect(saga_status=frozenset({SagaStatus.RUNNING})),
    StepExpect(saga_status=frozenset({SagaStatus.COMPENSATING, SagaStatus.FAILED})),
    StepExpect(
        status=_FORWARD,
        attempt_at_most=2,
        comp_attempt=0,
        saga_status=frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING}),
    ),
]


@pytest.mark.parametrize("saga_status", [SagaStatus.RUNNING, SagaStatus.COMPENSATING])
def test_server_side_conditions_agree_with_step_expect_refusal(
    mongo_store: MongoSagaBackend, saga_status: SagaStatus
) -> None:
    execution = make_execution(stages=[0] * len(_STATES), status=saga_status)
    mongo_store.create(execution)
    sid = execution.saga_id
    for index, (status, attempt, comp_attempt) in enumerate(_STATES):
        mongo_store.update_step(
            sid, index, {"status": status, "attempt": attempt, "comp_attempt": comp_attempt}
        )
    for (index, (status, attempt, comp_attempt)), expect in itertools.product(
        enumerate(_STATES), _EXPECTS
    ):
        should_apply = expect.refusal(status, attempt, comp_attempt, saga_status) is None
        write = mongo_store.update_step(
            sid, index, {"error": "touched"}, expect=expect, count_in=f"c{index}"
        )
        assert write.applied is should_apply, (status, attempt, comp_attempt, expect)
        assert (write.status, write.attempt, write.comp_attempt, write.saga_status) == (
            status,
            attempt,
            comp_attempt,
            saga_status,
        )
        assert (write.count is not None) is should_apply
    got = mongo_store.get(sid)
    assert got is not None
    for index, (status, attempt, comp_attempt) in enumerate(_STATES):
        applied = sum(
            e.refusal(status, attempt, comp_attempt, saga_status) is None for e in _EXPECTS
        )
        step = got.step(index)
        assert step.seq == applied  # the counter moved once per applied write, never more
        assert (step.error == "touched") is (applied > 0)


# -- leases and late successes -----------------------------------------------------------------

#: (lease_owner, lease_expires_at) of a step; "absent" leaves the fields out of the
#: document, as a step written before they existed has them.
_LEASES: list[tuple[Any, Any]] = [
    (None, None),
    ("absent", "absent"),
    ("a", None),
    ("a", 100.0),
    ("b", 100.0),
    ("a", 99),
]
_LEASE_EXPECTS = (
    [
        StepExpect(lease_free_at=free, lease_holder=holder)
        for free, holder in itertools.product([99.0, 100.0, 101.0], [None, "a", "b"])
    ]
    + [
        StepExpect(lease_owners=owners)
        for owners in [(), (None,), ("a",), ("a", None), ("b", None), ("a", "b")]
    ]
    + [
        StepExpect(status=frozenset({StepStatus.RUNNING}), attempt=1, lease_owners=("a", None)),
        StepExpect(status=_FORWARD, attempt=1, lease_free_at=100.0),
        StepExpect(attempt=2, lease_free_at=101.0),
        StepExpect(lease_free_at=100.0, lease_holder="b", lease_owners=("a", None)),
    ]
)


def test_server_side_lease_conditions_agree_with_step_expect_refusal(
    mongo_store: MongoSagaBackend,
) -> None:
    """Every step but the first holds a lease state, so a null test on ``steps.<i>``
    that also matched other steps (lacking a field named ``<i>``) would show."""
    execution = make_execution(stages=[0] * (len(_LEASES) + 1))
    mongo_store.create(execution)
    sid = execution.saga_id
    for index, (owner, expires) in enumerate(_LEASES, start=1):
        changes: dict[str, Any] = {"status": StepStatus.RUNNING, "attempt": 1}
        if owner != "absent":
            changes.update(lease_owner=owner, lease_expires_at=expires)
        mongo_store.update_step(sid, index, changes)
        if owner == "absent":
            mongo_store.executions.update_one(
                {"_id": sid},
                {
                    "$unset": {
                        f"steps.{index}.lease_owner": "",
                        f"steps.{index}.lease_expires_at": "",
                    }
                },
            )
    raw = mongo_store.executions.find_one({"_id": sid})
    assert raw is not None and "lease_owner" not in raw["steps"][2]
    applied = dict.fromkeys(range(1, len(_LEASES) + 1), 0)
    for (index, (owner, expires)), expect in itertools.product(
        enumerate(_LEASES, start=1), _LEASE_EXPECTS
    ):
        owner, expires = (None, None) if owner == "absent" else (owner, expires)
        should_apply = (
            expect.refusal(StepStatus.RUNNING, 1, 0, SagaStatus.RUNNING, owner, expires) is None
        )
        write = mongo_store.update_step(
            sid, index, {"error": "touched"}, expect=expect, count_in=f"c{index}"
        )
        assert write.applied is should_apply, (owner, expires, expect)
        assert (write.lease_owner, write.lease_expires_at) == (owner, expires)
        applied[index] += should_apply
    got = mongo_store.get(sid)
    assert got is not None
    for index, count in applied.items():
        assert got.step(index).seq == count  # the counter moved once per applied write


def test_refused_and_applied_writes_report_the_lease(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution()
    mongo_store.create(execution)
    sid = execution.saga_id
    lease = {"status": StepStatus.RUNNING, "attempt": 1}
    write = mongo_store.update_step(
        sid, 0, {**lease, "lease_owner": "h/1/t", "lease_expires_at": 5}
    )
    assert write.applied and (write.lease_owner, write.lease_expires_at) == ("h/1/t", 5.0)
    refused = mongo_store.update_step(
        sid, 0, {"error": "x"}, expect=StepExpect(lease_owners=(None,)), count_in="c"
    )
    assert not refused.applied
    assert (refused.lease_owner, refused.lease_expires_at) == ("h/1/t", 5.0)
    raw = mongo_store.executions.find_one({"_id": sid})
    assert raw is not None and isinstance(raw["steps"][0]["lease_expires_at"], float)


def test_lease_fields_round_trip_and_older_documents_read_defaults(
    mongo_store: MongoSagaBackend,
) -> None:
    execution = make_execution()
    step = execution.steps[1]
    step.status, step.attempt = StepStatus.RUNNING, 3
    step.lease_owner, step.lease_expires_at = "host/7/task", time.time() + 30
    step.sent_at, step.sends = time.time(), 2
    step.late = {"1": {"state": "compensated", "output": AWKWARD, "compensation_data": None}}
    mongo_store.create(execution)
    got = mongo_store.get(execution.saga_id)
    assert got is not None
    assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}
    raw = mongo_store.executions.find_one({"_id": execution.saga_id})
    assert raw is not None
    assert "late" not in raw["steps"][0]  # no late successes: no field (not null)
    stored = raw["steps"][1]["late"]["1"]
    assert stored["state"] == "compensated"  # native: filters compare it
    assert isinstance(stored["output"], str)  # user data: JSON text
    fields = ("lease_owner", "lease_expires_at", "sent_at", "sends", "late")
    mongo_store.executions.update_one(
        {"_id": execution.saga_id}, {"$unset": {f"steps.1.{name}": "" for name in fields}}
    )
    got = mongo_store.get(execution.saga_id)
    assert got is not None
    assert [getattr(got.step(1), name) for name in fields] == [None, None, None, 0, None]


@pytest.mark.parametrize("name", ["lease_expires_at", "sent_at"])
@pytest.mark.parametrize("bad", ["soon", {"$gt": 0}, True])
def test_step_times_that_are_not_numbers_are_refused_before_anything_is_sent(
    watched: tuple[MongoSagaBackend, Commands], name: str, bad: Any
) -> None:
    store, commands = watched
    execution = make_execution()
    store.create(execution)
    commands.clear()
    with pytest.raises(ValueError, match=f"{name} must be a number"):
        store.update_step(execution.saga_id, 0, {name: bad})
    assert commands.sent == []


def test_lease_values_are_compared_as_values(watched: tuple[MongoSagaBackend, Commands]) -> None:
    store, commands = watched
    execution = make_execution()
    store.create(execution)
    sid = execution.saga_id
    commands.clear()
    with pytest.raises(TypeError, match="lease owner"):
        store.update_step(sid, 0, {}, expect=StepExpect(lease_owners=({"$ne": None},)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease_holder"):
        store.update_step(
            sid,
            0,
            {},
            expect=StepExpect(lease_free_at=1.0, lease_holder={"$ne": 1}),  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="lease_free_at"):
        store.update_step(sid, 0, {}, expect=StepExpect(lease_free_at="now"))  # type: ignore[arg-type]
    with pytest.raises(InvalidSagaId):
        store.renew_leases([Lease({"$ne": None}, 0, "me", 1)], 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease owner"):
        store.renew_leases([Lease(sid, 0, None, 1)], 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_at"):
        store.renew_leases([Lease(sid, 0, "me", 1)], {"$gt": 0})  # type: ignore[arg-type]
    assert commands.sent == []


def _running_steps(store: MongoSagaBackend, owner: str | None, count: int = 1) -> str:
    execution = make_execution(stages=[0] * count)
    store.create(execution)
    for index in range(count):
        store.update_step(
            execution.saga_id,
            index,
            {"status": StepStatus.RUNNING, "attempt": 1, "lease_owner": owner},
        )
    return execution.saga_id


def test_renewing_leases_is_one_unordered_update_command(
    watched: tuple[MongoSagaBackend, Commands],
) -> None:
    store, commands = watched
    leases = [Lease(_running_steps(store, "me", 3), i, "me", 1) for i in range(3)]
    leases += [Lease(_running_steps(store, None), 0, "me", 1) for _ in range(20)]
    commands.clear()
    store.stats.reset()
    assert store.renew_leases(leases, 1e10) == []
    assert store.stats.round_trips == 1
    assert [e.command_name for e in commands.sent] == ["update"]
    command = commands.sent[0].command
    assert command["ordered"] is False
    assert len(command["updates"]) == len(leases)
    for lease in leases:
        got = store.get(lease.saga_id)
        assert got is not None
        assert (got.step(lease.index).lease_owner, got.step(lease.index).lease_expires_at) == (
            "me",
            1e10,
        )


def test_a_lost_lease_is_found_by_one_more_read(
    watched: tuple[MongoSagaBackend, Commands],
) -> None:
    store, commands = watched
    sid = _running_steps(store, "me", 3)
    taken = _running_steps(store, "other")
    kept = [Lease(sid, 0, "me", 1), Lease(sid, 2, "me", 1)]
    lost = [
        Lease(taken, 0, "me", 1),  # another owner holds it
        Lease(sid, 1, "me", 2),  # the step runs another attempt
        Lease(sid, 1, "me", 1, compensation=True),  # the step is not compensating
        Lease(sid, 7, "me", 1),  # no such step
        Lease(str(uuid.uuid4()), 0, "me", 1),  # no such execution
    ]
    commands.clear()
    store.stats.reset()
    assert store.renew_leases(kept + lost + kept, 1e10) == lost
    assert store.stats.round_trips == 2
    assert [e.command_name for e in commands.sent] == ["update", "find"]
    got = store.get(sid)
    assert got is not None
    assert [s.lease_expires_at for s in got.steps] == [1e10, None, 1e10]
    other = store.get(taken)
    assert other is not None and other.step(0).lease_owner == "other"


def test_record_late_sends_one_conditional_write_of_that_entry(
    watched: tuple[MongoSagaBackend, Commands],
) -> None:
    store, commands = watched
    sid = _big_execution(store, steps=5)
    store.update_step(sid, 3, {"status": StepStatus.RUNNING, "attempt": 2})
    commands.clear()
    store.stats.reset()
    entry = {"state": "recorded", "output": AWKWARD, "compensation_data": [AWKWARD]}
    write = store.record_late(sid, 3, 1, entry)
    assert write.applied and (write.status, write.attempt) == (StepStatus.RUNNING, 2)
    moved = store.record_late(sid, 3, 1, {"state": "compensating"}, expect_state="recorded")
    assert moved.applied
    assert store.stats.round_trips == 2
    sent = commands.named("findAndModify")
    assert len(commands.sent) == len(sent) == 2
    assert set(sent[0].command["update"]["$set"]) == {"steps.3.late.1", "updated_at"}
    assert set(sent[1].command["update"]["$set"]) == {"steps.3.late.1.state", "updated_at"}
    for event in sent:
        assert len(bson.encode(commands.replies[event.request_id]["value"])) < 300
    # Refused: the write, then one read to report the state.
    commands.clear()
    assert not store.record_late(sid, 3, 1, {"state": "x"}, expect_state="recorded").applied
    assert [e.command_name for e in commands.sent] == ["findAndModify", "find"]
    got = store.get(sid)
    assert got is not None
    assert got.step(3).late == {"1": {**entry, "state": "compensating"}}
    assert all(got.step(i).late is None for i in (0, 1, 2, 4))


def test_record_late_on_a_step_whose_late_is_null(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution()
    mongo_store.create(execution)
    sid = execution.saga_id
    mongo_store.update_step(sid, 0, {"late": None})
    raw = mongo_store.executions.find_one({"_id": sid})
    assert raw is not None and raw["steps"][0]["late"] is None
    assert mongo_store.record_late(sid, 0, 4, {"state": "recorded", "output": 1}).applied
    assert not mongo_store.record_late(sid, 0, 4, {"state": "recorded"}).applied
    assert mongo_store.record_late(sid, 0, 5, {"state": "recorded"}).applied
    got = mongo_store.get(sid)
    assert got is not None
    assert got.step(0).late == {"4": {"state": "recorded", "output": 1}, "5": {"state": "recorded"}}
    # A whole `late` written by update_step (with or without a counter) is read the same way.
    for count_in in (None, "c"):
        late = {"2": {"state": "recorded", "output": {"$in": [2**64]}}}
        mongo_store.update_step(sid, 1, {"late": late}, count_in=count_in)
        assert mongo_store.record_late(sid, 1, 2, {"state": "x"}, expect_state="recorded").applied
        got = mongo_store.get(sid)
        assert got is not None
        assert got.step(1).late == {"2": {"state": "x", "output": {"$in": [2**64]}}}


def test_record_late_refuses_keys_that_would_split_the_path(
    watched: tuple[MongoSagaBackend, Commands],
) -> None:
    store, commands = watched
    execution = make_execution()
    store.create(execution)
    sid = execution.saga_id
    commands.clear()
    for changes in ({"a.b": 1}, {"$set": 1}, {"": 1}):
        with pytest.raises(ValueError, match="late-success field"):
            store.record_late(sid, 0, 1, changes)
    with pytest.raises(ValueError, match="late-success attempt"):
        store.update_step(sid, 0, {"late": {"1.state": {"state": "recorded"}}})
    with pytest.raises(TypeError):
        store.record_late(sid, 0, True, {"state": "recorded"})
    with pytest.raises(TypeError):
        store.record_late(sid, 0, 1, {}, expect_state={"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        store.record_late(sid, -1, 1, {"state": "recorded"})
    assert commands.sent == []
    with pytest.raises(KeyError):
        store.record_late(sid, 3, 1, {"state": "recorded"})
    with pytest.raises(KeyError):
        store.record_late(str(uuid.uuid4()), 0, 1, {"state": "recorded"}, expect_state="recorded")


# -- create, delete, purge ---------------------------------------------------------------------


def test_create_with_an_existing_saga_id_is_refused(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution()
    mongo_store.create(execution)
    with pytest.raises(ValueError, match="already exists"):
        mongo_store.create(execution)
    keyed = make_execution(idempotency_key="fresh-key")
    keyed.saga_id = execution.saga_id
    with pytest.raises(ValueError, match="already exists"):
        mongo_store.create(keyed)


def test_steps_must_be_numbered_from_zero(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution(steps=3)
    execution.steps[2].index = 5
    with pytest.raises(ValueError, match="without gaps"):
        mongo_store.create(execution)


def test_idempotency_index_ignores_executions_without_a_key(
    mongo_store: MongoSagaBackend,
) -> None:
    for _ in range(3):
        _, created = mongo_store.create(make_execution())
        assert created
    names = mongo_store.executions.index_information()
    assert names["idempotency_key_unique"]["unique"]
    assert {"status_created", "name_created", "created", "name_status_created"} <= set(names)


def test_purge_uses_updated_at_when_finished_at_is_missing(mongo_store: MongoSagaBackend) -> None:
    old_failed, old_running = make_execution(), make_execution()
    for execution in (old_failed, old_running):
        mongo_store.create(execution)
    mongo_store.update_saga(old_failed.saga_id, {"status": SagaStatus.FAILED})
    cutoff = time.time() + 10  # both were last updated before this
    assert mongo_store.purge(cutoff) == 1
    assert mongo_store.get(old_failed.saga_id) is None
    assert mongo_store.get(old_running.saga_id) is not None


def test_delete_explains_why_an_unfinished_execution_stays(mongo_store: MongoSagaBackend) -> None:
    execution = make_execution(status=SagaStatus.COMPENSATING)
    mongo_store.create(execution)
    with pytest.raises(ValueError, match="is compensating: only finished executions"):
        mongo_store.delete(execution.saga_id)


def test_listing_pages_with_name_and_status_by_cursor(mongo_store: MongoSagaBackend) -> None:
    base = time.time() - 100
    made = []
    for i in range(9):
        execution = make_execution(name="pay", created_at=base + i // 3)  # ties on created_at
        mongo_store.create(execution)
        made.append(execution)
    expected = [
        e.saga_id for e in sorted(made, key=lambda e: (e.created_at, e.saga_id), reverse=True)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = mongo_store.list(name="pay", status=SagaStatus.RUNNING, limit=2, cursor=cursor)
        seen += [s.saga_id for s in page.items]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == expected


# -- waiting -----------------------------------------------------------------------------------


def _counting_gets(store: MongoSagaBackend) -> tuple[list[float], threading.Event]:
    """Count the store's reads of the execution: `get`, and `get_status` (a poll)."""
    calls: list[float] = []
    first = threading.Event()

    def counting(original: Callable[[str], Any]) -> Callable[[str], Any]:
        def read(saga_id: str) -> Any:
            calls.append(time.monotonic())
            result = original(saga_id)
            first.set()
            return result

        return read

    store.get = counting(store.get)  # type: ignore[method-assign]
    store.get_status = counting(store.get_status)  # type: ignore[method-assign]
    return calls, first


def test_wait_on_a_change_stream_reads_only_when_notified(
    make_store: Callable[..., MongoSagaBackend],
) -> None:
    store = make_store()
    execution = make_execution()
    store.create(execution)
    if not store.change_streams:
        pytest.skip("this server has no change streams (a standalone mongod): wait() polls")
    calls, _ = _counting_gets(store)
    assert store.wait(execution.saga_id, timeout=0.6) is None
    assert len(calls) == 1  # polling would have read it about ten times

    calls.clear()
    writer = make_store()
    result: list[Any] = []
    _, first_read = _counting_gets(store)
    waiter = threading.Thread(target=lambda: result.append(store.wait(execution.saga_id, 30)))
    waiter.start()
    assert first_read.wait(10)
    writer.update_step(execution.saga_id, 0, {"error": "not a status change"})
    writer.update_saga(execution.saga_id, {"status": SagaStatus.FAILED, "error": "done"})
    waiter.join(30)
    assert result
    assert result[0] is not None
    assert result[0].status is SagaStatus.FAILED


def test_wait_polls_when_change_streams_are_off(
    make_store: Callable[..., MongoSagaBackend],
) -> None:
    store = make_store(change_streams=False)
    execution = make_execution()
    store.create(execution)
    calls, _ = _counting_gets(store)
    assert store.wait(execution.saga_id, timeout=0.6) is None
    assert len(calls) > 2
    assert store.change_streams is False


def test_standalone_server_is_detected_and_wait_falls_back_to_polling(
    standalone_store_url: str,
) -> None:
    url = standalone_store_url
    store = MongoSagaBackend.from_url(url)
    try:
        execution = make_execution()
        store.create(execution)
        assert store.change_streams is False
        _, first_read = _counting_gets(store)
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(store.wait(execution.saga_id, 30)))
        waiter.start()
        assert first_read.wait(10)  # the waiter has seen it running; now finish it
        store.update_saga(execution.saga_id, {"status": SagaStatus.COMPLETED})
        waiter.join(30)
        assert result
        assert result[0] is not None
        assert result[0].status is SagaStatus.COMPLETED
    finally:
        store.close()
    forced = MongoSagaBackend.from_url(url + "&change_streams=true")
    try:
        with pytest.raises(RuntimeError, match="replica set"):
            forced.get(str(uuid.uuid4()))
    finally:
        forced.close()


# -- deadline_at, cancelled_at and the CANCELLED status ------------------------------------------


def test_deadline_and_cancelled_at_round_trip_as_numbers(mongo_store: MongoSagaBackend) -> None:
    deadline = time.time() + 3600.123456789
    execution = make_execution(idempotency_key="with-deadline")
    execution.deadline_at = deadline
    mongo_store.create(execution)
    raw = mongo_store.executions.find_one({"_id": execution.saga_id})
    assert raw is not None
    assert raw["deadline_at"] == deadline
    assert isinstance(raw["deadline_at"], float)  # a BSON double, not JSON text
    assert raw["cancelled_at"] is None
    got = mongo_store.get(execution.saga_id)
    assert got is not None
    assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}
    found = mongo_store.find_by_idempotency_key("with-deadline")
    assert found is not None
    assert found.deadline_at == deadline

    cancelled = time.time()
    changes = {"status": SagaStatus.CANCELLED, "cancelled_at": cancelled, "finished_at": cancelled}
    assert mongo_store.update_saga(execution.saga_id, changes, expect_status={SagaStatus.RUNNING})
    later = {"status": SagaStatus.CANCELLED, "cancelled_at": cancelled + 5}
    assert not mongo_store.update_saga(execution.saga_id, later, expect_status={SagaStatus.RUNNING})
    got = mongo_store.get(execution.saga_id)
    assert got is not None
    assert (got.status, got.cancelled_at, got.finished_at, got.deadline_at) == (
        SagaStatus.CANCELLED,
        cancelled,
        cancelled,
        deadline,
    )
    raw = mongo_store.executions.find_one({"_id": execution.saga_id})
    assert raw is not None
    assert (raw["status"], raw["cancelled_at"]) == ("cancelled", cancelled)
    assert isinstance(raw["cancelled_at"], float)
    # An int is a number of seconds too: stored as a double.
    assert mongo_store.update_saga(execution.saga_id, {"cancelled_at": int(cancelled)})
    raw = mongo_store.executions.find_one({"_id": execution.saga_id})
    assert raw is not None
    assert raw["cancelled_at"] == float(int(cancelled))
    assert isinstance(raw["cancelled_at"], float)
    with pytest.raises(ValueError, match="cannot set"):  # fixed when the execution is created
        mongo_store.update_saga(execution.saga_id, {"deadline_at": deadline + 1})
    listed = mongo_store.list(status="cancelled").items
    assert [(s.saga_id, s.status) for s in listed] == [(execution.saga_id, SagaStatus.CANCELLED)]


@pytest.mark.parametrize("bad", ["2030-01-01", {"$gt": 0}, True, [1.0]])
def test_times_that_are_not_numbers_are_refused_before_anything_is_sent(
    watched: tuple[MongoSagaBackend, Commands], bad: Any
) -> None:
    store, commands = watched
    execution = make_execution()
    store.create(execution)
    commands.clear()
    with pytest.raises(ValueError, match="cancelled_at must be a number"):
        store.update_saga(execution.saga_id, {"cancelled_at": bad})
    refused = make_execution()
    refused.deadline_at = bad
    with pytest.raises(ValueError, match="deadline_at must be a number"):
        store.create(refused)
    assert commands.sent == []
    got = store.get(execution.saga_id)
    assert got is not None
    assert got.cancelled_at is None


def test_documents_written_without_the_new_fields_read_them_as_none(
    mongo_store: MongoSagaBackend,
) -> None:
    """Documents from before deadline_at and cancelled_at existed need no migration."""
    execution = make_execution()
    mongo_store.create(execution)
    mongo_store.executions.update_one(
        {"_id": execution.saga_id}, {"$unset": {"deadline_at": "", "cancelled_at": ""}}
    )
    raw = mongo_store.executions.find_one({"_id": execution.saga_id})
    assert raw is not None
    assert "deadline_at" not in raw and "cancelled_at" not in raw
    got = mongo_store.get(execution.saga_id)
    assert got is not None
    assert (got.deadline_at, got.cancelled_at) == (None, None)
    assert got.to_dict() | {"updated_at": 0} == execution.to_dict() | {"updated_at": 0}
    stamp = time.time()
    assert mongo_store.update_saga(
        execution.saga_id, {"status": SagaStatus.CANCELLED, "cancelled_at": stamp}
    )
    got = mongo_store.get(execution.saga_id)
    assert got is not None
    assert (got.status, got.cancelled_at, got.deadline_at) == (SagaStatus.CANCELLED, stamp, None)


def test_cancelled_executions_are_finished_for_delete_and_purge(
    mongo_store: MongoSagaBackend,
) -> None:
    old, recent, unstamped, running = (make_execution() for _ in range(4))
    for execution in (old, recent, unstamped, running):
        mongo_store.create(execution)
    cutoff = time.time() + 30
    for execution, at in ((old, cutoff - 100), (recent, cutoff + 100)):
        mongo_store.update_saga(
            execution.saga_id,
            {"status": SagaStatus.CANCELLED, "cancelled_at": at, "finished_at": at},
        )
    # Cancelled without finished_at: purge goes by updated_at (before the cutoff).
    mongo_store.update_saga(unstamped.saga_id, {"status": SagaStatus.CANCELLED})
    assert mongo_store.purge(cutoff) == 2
    assert mongo_store.get(old.saga_id) is None
    assert mongo_store.get(unstamped.saga_id) is None
    assert mongo_store.get(recent.saga_id) is not None
    assert mongo_store.get(running.saga_id) is not None
    with pytest.raises(ValueError, match="is running: only finished executions"):
        mongo_store.delete(running.saga_id)
    assert mongo_store.delete(recent.saga_id)
    assert mongo_store.get(recent.saga_id) is None
    assert not mongo_store.delete(recent.saga_id)
    mongo_store.update_saga(running.saga_id, {"status": SagaStatus.CANCELLED})
    assert mongo_store.delete(running.saga_id)


@pytest.mark.parametrize("change_streams", [None, False], ids=["as-detected", "polling"])
def test_wait_returns_a_cancelled_execution(
    make_store: Callable[..., MongoSagaBackend], change_streams: bool | None
) -> None:
    store = make_store(change_streams=change_streams)
    writer = make_store()
    done, running = make_execution(), make_execution()
    for execution in (done, running):
        store.create(execution)
    writer.update_saga(done.saga_id, {"status": SagaStatus.CANCELLED})
    got = store.wait(done.saga_id, timeout=10)  # already cancelled: returns at once
    assert got is not None
    assert got.status is SagaStatus.CANCELLED

    result: list[Any] = []
    _, first_read = _counting_gets(store)
    waiter = threading.Thread(target=lambda: result.append(store.wait(running.saga_id, 30)))
    waiter.start()
    assert first_read.wait(10)  # the waiter has seen it running; now cancel it
    stamp = time.time()
    writer.update_saga(running.saga_id, {"status": SagaStatus.CANCELLED, "cancelled_at": stamp})
    waiter.join(30)
    assert not waiter.is_alive()
    assert result
    assert result[0] is not None
    assert (result[0].status, result[0].cancelled_at) == (SagaStatus.CANCELLED, stamp)
    if change_streams is False:
        assert store.change_streams is False
