"""The pytest plugin `celery_saga.contrib.pytest`, run on small test modules by pytester.

The sessions that matter run in a subprocess, as a user's would: an app configured
with a real Redis broker (in one of them ``CELERY_BROKER_URL`` too, which Celery reads
first), a producer pool made before the first test, and the eager and worker fixtures
in one session, in either order. Nothing consumes the app's Redis queue, so
a worker test that passes got its messages over the in-memory broker; afterwards the
queue's keys in Redis must not exist at all. After every test an autouse fixture
checks that each setting, pool and environment variable is back as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from support import REDIS_URL, require

from celery_saga import Saga
from celery_saga.backends import MemorySagaBackend
from celery_saga.contrib.pytest import assert_compensated, assert_steps, describe
from celery_saga.models import SagaExecution, SagaStatus, StepRecord, StepStatus

pytest_plugins = ("pytester",)

#: The Redis database of the app's broker; a test touches only its own queue's keys there.
BROKER_DB = 7

SAGA_APP = """
from celery import Celery

from celery_saga import Saga, StepResponse, saga_step

app = Celery("plugin-check", broker={broker!r}, set_as_current=False)
app.conf.update(task_default_queue={queue!r}, saga_backend="memory://configured-in-the-app")
app.amqp.producer_pool  # like an app that already sent a message: its pools exist


@app.task(name="check.undo")
def undo(compensation_data):
    return None


@saga_step(compensate=undo)
@app.task(name="check.reserve")
def reserve(**order):
    return StepResponse(output={{"reserved": True}}, compensation_data={{"step": "reserve"}})


@saga_step(compensate=undo)
@app.task(name="check.charge")
def charge(**order):
    return StepResponse(output={{"charged": True}}, compensation_data={{"step": "charge"}})


@app.task(name="check.ship")
def ship(**order):
    if order.get("fail"):
        raise RuntimeError("no truck today")
    return {{"shipped": True}}


order = (
    Saga("check.order", app=app)
    .add_step(reserve)
    .add_step(charge)
    .add_step(ship, no_compensation=True)
)
"""

CONFTEST = """
import os

import pytest

pytest_plugins = ("celery_saga.contrib.pytest",)

WATCHED = (
    "task_always_eager", "task_eager_propagates", "saga_backend",
    "saga_compensation_retry_backoff", "broker_url", "broker_read_url", "broker_write_url",
    "broker_transport_options", "broker_connection_retry_on_startup",
)


@pytest.fixture
def saga_app():
    from sagaapp import app
    return app


def _state(app):
    settings = {name: app.conf.changes.get(name, "<unset>") for name in WATCHED}
    return settings, os.environ.get("CELERY_BROKER_URL"), app.conf.broker_url


@pytest.fixture(autouse=True)
def _everything_put_back(saga_app):
    before = _state(saga_app)
    pools = (saga_app._pool, saga_app.amqp._producer_pool)
    assert pools[1] is not None, "the app made its producer pool at import"
    yield
    assert _state(saga_app) == before
    assert saga_app._pool is pools[0] and saga_app.amqp._producer_pool is pools[1]
"""

EAGER_TEST = """
def test_{n}_eager(saga_eager, saga_store, saga_app):
    assert saga_app.conf.task_always_eager and saga_app.conf.saga_backend is saga_store
    done = order.run()
    assert done.status is SagaStatus.COMPLETED  # finished inside run()
    assert_steps(done, ["success", "success", "success"])
    undone = order.run(fail=True)
    assert_steps(undone, ["compensated", "compensated", "failed"])
    assert_compensated(undone, [1, 0])
    assert {{e.saga_id for e in saga_store.list().items}} == {{done.saga_id, undone.saga_id}}
"""

WORKER_TEST = """
def test_{n}_worker(saga_worker, saga_store):
    done = order.run()
    assert done.get(timeout=30) == {{"reserved": True, "charged": True, "shipped": True}}
    with pytest.raises(SagaCompensated) as info:
        order.run(fail=True).get(timeout=30)
    assert_steps(info.value, ["compensated", "compensated", "failed"])
    assert_compensated(info.value, [1, 0])
    assert saga_store.get(done.saga_id) is not None
"""

TEST_HEADER = """
import pytest
from sagaapp import order

from celery_saga import SagaCompensated, SagaStatus
from celery_saga.contrib.pytest import assert_compensated, assert_steps
"""


def _redis_keys(queue: str) -> list[bytes]:
    """The keys of `queue` in the broker database: its list and kombu's bindings."""
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{BROKER_DB}")
    try:
        return sorted(client.keys(f"*{queue}*"))
    finally:
        client.close()


def _drop_redis_keys(queue: str) -> None:
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{BROKER_DB}")
    try:
        for key in client.keys(f"*{queue}*"):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def queue() -> Iterator[str]:
    """A queue name of this test's own; its keys are removed from Redis afterwards."""
    require(REDIS_URL, 6379, "Redis")
    name = f"saga-plugin-{uuid.uuid4().hex[:10]}"
    yield name
    _drop_redis_keys(name)


@pytest.mark.parametrize(
    ("order", "env_broker"),
    [(["eager", "worker"], False), (["worker", "eager"], True)],
    ids=["eager-then-worker", "worker-then-eager-with-CELERY_BROKER_URL"],
)
def test_eager_and_worker_fixtures_in_one_session_send_nothing_to_the_apps_broker(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    queue: str,
    order: list[str],
    env_broker: bool,
) -> None:
    broker = f"{REDIS_URL}/{BROKER_DB}"
    if env_broker:  # Celery reads it before broker_url
        monkeypatch.setenv("CELERY_BROKER_URL", broker)
    pytester.makepyfile(sagaapp=SAGA_APP.format(broker=broker, queue=queue))
    pytester.makeconftest(CONFTEST)
    tests = {"eager": EAGER_TEST, "worker": WORKER_TEST}
    body = "".join(tests[kind].format(n=n) for n, kind in enumerate(order, 1))
    pytester.makepyfile(test_sagas=TEST_HEADER + body)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=180)

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*test_1_{order[0]} PASSED*", f"*test_2_{order[1]} PASSED*"])
    assert _redis_keys(queue) == [], "a message of the tests reached the app's Redis broker"
    # The check above can see a message: one sent on the app's own broker shows up.
    with Celery("probe", broker=broker, set_as_current=False) as probe:
        probe.send_task("check.ship", queue=queue)
    assert queue.encode() in _redis_keys(queue)


def test_the_plugin_is_off_unless_enabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_store(saga_store):
            assert saga_store.list().items == []
        """
    )
    off = pytester.runpytest("-p", "no:cacheprovider")
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*fixture 'saga_store' not found*"])

    on = pytester.runpytest("-p", "no:cacheprovider", "-p", "celery_saga.contrib.pytest")
    on.assert_outcomes(passed=1)

    # The installed pytest11 entry point is a switch: --celery-saga, or the ini setting.
    switched = pytester.runpytest("-p", "no:cacheprovider", "--celery-saga")
    switched.assert_outcomes(passed=1)
    pytester.makeini("[pytest]\ncelery_saga = true\n")
    by_ini = pytester.runpytest("-p", "no:cacheprovider")
    by_ini.assert_outcomes(passed=1)
    by_ini_and_flag = pytester.runpytest(
        "-p", "no:cacheprovider", "--celery-saga", "-p", "celery_saga.contrib.pytest"
    )
    by_ini_and_flag.assert_outcomes(passed=1)
    (pytester.path / "tox.ini").unlink()  # what makeini wrote

    # Enabled twice (conftest and -p): one plugin, no "already registered" error.
    pytester.makeconftest('pytest_plugins = ("celery_saga.contrib.pytest",)')
    both = pytester.runpytest("-p", "no:cacheprovider", "-p", "celery_saga.contrib.pytest")
    both.assert_outcomes(passed=1)


def test_without_a_saga_app_fixture_the_error_says_how_to_define_one(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest('pytest_plugins = ("celery_saga.contrib.pytest",)')
    pytester.makepyfile(
        """
        def test_eager(saga_eager):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*define a fixture named `saga_app` that returns it, in your conftest.py*"]
    )


def test_eager_and_worker_in_one_test_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from celery import Celery

        pytest_plugins = ("celery_saga.contrib.pytest",)
        app = Celery("both", broker="memory://", set_as_current=False)


        @pytest.fixture
        def saga_app():
            return app
        """
    )
    pytester.makepyfile(
        """
        from conftest import app


        def test_both(saga_eager, saga_worker):
            pass


        def test_put_back():
            assert not app.conf.task_always_eager
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(["*uses both saga_eager and saga_worker*pick one*"])


def test_a_saga_already_run_follows_the_apps_new_store() -> None:
    """The plugin gives each test its own store by changing ``saga_backend``: a saga
    object that ran before (its runtime cached) must write to the new store."""
    app = Celery("follow", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(shared=False, name="follow.only")
    def only(**kwargs: Any) -> dict[str, Any]:
        return {"done": True}

    saga = Saga("follow.saga", app=app).add_step(only, no_compensation=True)
    first, second = MemorySagaBackend(), MemorySagaBackend()
    app.conf.saga_backend = first
    one = saga.run()
    app.conf.saga_backend = second
    two = saga.run()
    assert first.get(one.saga_id) is not None and first.get(two.saga_id) is None
    assert second.get(two.saga_id) is not None and two.status is SagaStatus.COMPLETED


# -- the assertions -------------------------------------------------------------------------


def _execution() -> SagaExecution:
    """A compensated order: step 2 failed, 1 then 0 were compensated, 3 never ran."""
    steps = [
        StepRecord(0, "shop.reserve", 0, "shop.release", status=StepStatus.COMPENSATED),
        StepRecord(1, "shop.charge", 1, "shop.refund", status=StepStatus.COMPENSATED),
        StepRecord(2, "shop.ship", 2, error="RuntimeError('no truck today')"),
        StepRecord(3, "shop.confirm", 3, no_compensation=True),
    ]
    steps[0].comp_started_at, steps[1].comp_started_at = 20.0, 10.0
    steps[2].status = StepStatus.FAILED
    return SagaExecution(
        "s-1", "shop.order", SagaStatus.COMPENSATED, {"order_id": "A-1"}, steps, failed_step=2
    )


def test_assert_steps_and_assert_compensated_pass_on_the_record_as_it_is() -> None:
    execution = _execution()
    assert_steps(execution, ["compensated", StepStatus.COMPENSATED, "failed", "pending"])
    assert_compensated(execution, [1, 0])


def test_assert_steps_shows_the_whole_record_on_a_mismatch() -> None:
    with pytest.raises(AssertionError) as info:
        assert_steps(_execution(), ["success", "compensated", "failed", "pending"])
    message = str(info.value)
    assert "expected ['success', 'compensated', 'failed', 'pending']" in message
    assert "got      ['compensated', 'compensated', 'failed', 'pending']" in message
    assert "failed_step: 2" in message and "input: {'order_id': 'A-1'}" in message
    assert "step 2 'shop.ship' (stage 2, task): failed" in message
    assert "error=\"RuntimeError('no truck today')\"" in message
    assert "step 3 'shop.confirm' (stage 3, task): pending\n      no_compensation=True" in message


def test_assert_compensated_names_the_order_the_compensations_started_in() -> None:
    execution = _execution()
    with pytest.raises(AssertionError) as info:
        assert_compensated(execution, [0, 1])
    message = str(info.value)
    assert "expected [0, 1]\n  got      [1, 0]" in message
    assert describe(execution) in message


def test_the_assertions_refuse_what_is_not_a_saga_or_not_a_status() -> None:
    with pytest.raises(TypeError, match="expected a SagaResult, a SagaExecution"):
        assert_steps({"status": "completed"}, [])
    with pytest.raises(ValueError, match="'done' is not a step status; one of 'pending'"):
        assert_steps(_execution(), ["done"])
