"""The step scripts' packed calls (`celery_saga_redis.packed`): the same bytes on the wire
as redis-py's, the same replies, and redis-py's own call whenever the fast one cannot
finish: a server without the script, a connection lost, a single-connection client.

The server-side cases run on a redis-server of the tests' own (SCRIPT FLUSH and CLIENT
KILL there reach no other test).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_saga.backends.base import StepExpect
from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing.conformance import make_execution
from celery_saga_redis import RedisSagaBackend
from celery_saga_redis.packed import PackedScript

# Arguments of every type a step script gets, and the edge cases of each.
ARGUMENTS: list[tuple[str, list[Any]]] = [
    ("strings", ["1", "running success", '{"s":"pending","a":0}']),
    ("empty strings", ["", "", "x"]),
    ("non-ASCII text", ["café", "日本", "\u2028"]),
    ("integers", [0, -1, 2**62, 604800]),
    ("floats", [1764740000.123456, 0.1, -2.5e-07, 1e21]),
    ("bytes", [b"", b"\x00\xff", b"raw"]),
    ("CRLF inside values", ["a\r\nb", "\r\n"]),
]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize(("case", "args"), ARGUMENTS, ids=[c for c, _ in ARGUMENTS])
def test_a_packed_call_is_the_bytes_redis_py_would_send(
    case: str, args: list[Any], encoding: str
) -> None:
    if encoding == "latin-1" and case == "non-ASCII text":
        args = ["café", "\xff"]  # what latin-1 can encode
    client = redis.Redis(encoding=encoding)  # never connects: packing only
    script = client.register_script("return 1")
    keys = ["k:{a}", "c:{a}"]
    ours = PackedScript(client, script).command(keys, args)
    connection = client.connection_pool.make_connection()
    theirs = connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
    assert ours == b"".join(theirs)


def test_a_bool_argument_is_refused_as_redis_py_refuses_it() -> None:
    client = redis.Redis()  # never connects: packing only
    packed = PackedScript(client, client.register_script("return 1"))
    with pytest.raises(redis.DataError, match="Invalid input of type: 'bool'"):
        packed.command(["k"], [True])


@pytest.fixture
def own_server(acl_redis: int, unique: str) -> Iterator[tuple[RedisSagaBackend, redis.Redis]]:
    """A store on the tests' own redis-server (its connections named), and an admin client."""
    store = RedisSagaBackend.from_url(
        f"redis://127.0.0.1:{acl_redis}/0?prefix=p-{unique}:&client_name=packed-{unique}"
    )
    admin = redis.Redis(host="127.0.0.1", port=acl_redis, socket_timeout=5)
    yield store, admin
    for key in admin.scan_iter(match=f"p-{unique}:*", count=1000):
        admin.delete(key)
    store.close()
    admin.close()


def _start(store: RedisSagaBackend) -> str:
    """A running saga whose step 0 is pending: the id."""
    execution = make_execution(steps=2)
    store.create(execution)
    return execution.saga_id


def _run_step(store: RedisSagaBackend, saga_id: str) -> bool:
    write = store.update_step(
        saga_id,
        0,
        {"status": StepStatus.RUNNING, "attempt": 1},
        expect=StepExpect(status=frozenset({StepStatus.PENDING})),
    )
    return write.applied


def test_the_hot_calls_go_packed_on_a_standalone_store(
    own_server: tuple[RedisSagaBackend, redis.Redis],
) -> None:
    store, _ = own_server
    assert isinstance(store._steps._update_step_call, PackedScript)
    assert isinstance(store._steps._finish_step_call, PackedScript)
    assert isinstance(store._create_indexed_call, PackedScript)
    assert isinstance(store._update_saga_call, PackedScript)
    saga_id = _start(store)
    assert _run_step(store, saga_id)
    assert not _run_step(store, saga_id)  # the compare-and-set read the first write back
    execution = store.get(saga_id)
    assert execution is not None
    assert execution.steps[0].status is StepStatus.RUNNING
    assert execution.steps[0].attempt == 1
    running = frozenset({SagaStatus.RUNNING})
    assert store.update_saga(saga_id, {"status": SagaStatus.FAILED}, expect_status=running)
    assert not store.update_saga(saga_id, {"status": SagaStatus.FAILED}, expect_status=running)
    assert store.get_status(saga_id) is SagaStatus.FAILED
    listed = store.list(status=SagaStatus.FAILED, name=execution.saga_name).items
    assert [s.saga_id for s in listed] == [saga_id]  # indexed under its new status


def test_a_server_without_the_script_gets_it_loaded(
    own_server: tuple[RedisSagaBackend, redis.Redis],
) -> None:
    store, admin = own_server
    saga_id = _start(store)
    admin.script_flush()
    assert _run_step(store, saga_id)
    assert admin.script_exists(store._steps._update_step.sha) == [True]


def test_a_lost_connection_is_replaced_and_the_write_done(
    own_server: tuple[RedisSagaBackend, redis.Redis], unique: str
) -> None:
    store, admin = own_server
    saga_id = _start(store)
    assert store.get(saga_id) is not None  # a pooled connection now exists
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert _run_step(store, saga_id)
    execution = store.get(saga_id)
    assert execution is not None and execution.steps[0].status is StepStatus.RUNNING


def test_a_single_connection_client_takes_redis_pys_call(acl_redis: int, unique: str) -> None:
    client = redis.Redis(
        host="127.0.0.1", port=acl_redis, single_connection_client=True, decode_responses=True
    )
    store = RedisSagaBackend(client, prefix=f"p-{unique}:")
    try:
        saga_id = _start(store)
        assert _run_step(store, saga_id)
        assert not _run_step(store, saga_id)
    finally:
        for key in client.scan_iter(match=f"p-{unique}:*", count=1000):
            client.delete(key)
        store.close()
