"""pytest fixtures and assertions for testing sagas, each test isolated from the others.

Off until enabled, like ``celery.contrib.pytest``: installing celery-saga changes
nothing in anyone's test run. Enable it on the command line or in the root
``conftest.py``::

    pytest -p celery_saga.contrib.pytest
    pytest --celery-saga                  # the installed pytest11 switch
    pytest_plugins = ("celery_saga.contrib.pytest",)

then tell it which Celery app to test, by overriding `saga_app`::

    @pytest.fixture
    def saga_app():
        from proj.celery import app
        return app

Fixtures: `saga_store` (a fresh memory store), `saga_eager` (the app runs every
saga inline, inside ``run()``), `saga_worker` (a real worker in a thread, on an
in-memory broker), `saga_worker_parameters` (what that worker is started with).
Assertions: `assert_steps`, `assert_compensated` (importable without enabling the
plugin).

Isolation: both `saga_eager` and `saga_worker` point the app at the test's own
store and at kombu's in-memory broker, with a new connection and producer pool (the
app's existing ones keep the broker they were made for, so changing ``broker_url``
alone would not do), and put every setting, pool and environment variable they
changed back after the test. No message of a test reaches the broker configured in
the app. Sagas defined with their own ``backend=`` keep that store.

The assertions raise their own messages, so pytest need not rewrite this module
(PYTEST_DONT_REWRITE): it may then be imported before the plugin is enabled.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

import pytest

from celery_saga.backends.memory import MemorySagaBackend
from celery_saga.models import SagaExecution, StepRecord, StepStatus
from celery_saga.result import SagaResult

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "BROKER_ENVIRONMENT",
    "MEMORY_BROKER",
    "WORKER_DEFAULTS",
    "assert_compensated",
    "assert_steps",
    "describe",
    "saga_app",
    "saga_eager",
    "saga_store",
    "saga_worker",
    "saga_worker_parameters",
]

#: Environment variables Celery reads before ``broker_url`` (and ``start_worker``'s
#: broker check): set, they would send a test's messages to a real broker.
BROKER_ENVIRONMENT = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "TEST_BROKER",
)

#: The broker settings of both fixtures. The app's transport options were written for
#: its own broker; the memory transport's only one is how often a consumer polls.
MEMORY_BROKER: dict[str, Any] = {
    "broker_url": "memory://localhost/",
    "broker_read_url": None,
    "broker_write_url": None,
    "broker_transport_options": {"polling_interval": 0.01},
}

#: How `saga_worker` starts its worker unless `saga_worker_parameters` says otherwise.
WORKER_DEFAULTS: dict[str, Any] = {
    "pool": "threads",
    "concurrency": 4,
    "perform_ping_check": False,  # the ping needs a result backend; sagas need none
    "shutdown_timeout": 30.0,
}


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def saga_app() -> Celery:
    """The Celery app under test: override this fixture to return yours."""
    raise NotImplementedError(
        "celery_saga.contrib.pytest does not know your Celery app: define a fixture "
        "named `saga_app` that returns it, in your conftest.py, for example\n\n"
        "    @pytest.fixture\n"
        "    def saga_app():\n"
        "        from proj.celery import app\n"
        "        return app\n"
    )


@pytest.fixture
def saga_store() -> MemorySagaBackend:
    """A new, empty memory store for this test; `saga_eager` and `saga_worker` use it."""
    return MemorySagaBackend()


@pytest.fixture
def saga_eager(saga_app: Celery, saga_store: MemorySagaBackend) -> Iterator[Celery]:
    """The app in eager mode: ``run()`` runs the whole saga inline and returns it finished.

    Sets ``task_always_eager``, ``task_eager_propagates``, ``saga_backend`` (the test's
    `saga_store`) and ``saga_compensation_retry_backoff=0`` (a failing compensation
    is retried at once), on an in-memory broker; all of it is undone after the test.
    """
    with (
        _memory_broker(saga_app),
        _settings(
            saga_app,
            task_always_eager=True,
            task_eager_propagates=True,
            saga_backend=saga_store,
            saga_compensation_retry_backoff=0,
        ),
    ):
        yield saga_app


@pytest.fixture
def saga_worker_parameters() -> Mapping[str, Any]:
    """Override to change how `saga_worker` starts its worker.

    The mapping is passed to ``celery.contrib.testing.worker.start_worker`` over
    `WORKER_DEFAULTS`, e.g. ``{"queues": ["celery", "payments"]}`` when steps are
    routed to queues the app does not list in ``task_queues``.
    """
    return {}


@pytest.fixture
def saga_worker(
    request: pytest.FixtureRequest,
    saga_app: Celery,
    saga_store: MemorySagaBackend,
    saga_worker_parameters: Mapping[str, Any],
) -> Iterator[Any]:
    """A real Celery worker in threads of the test process, on an in-memory broker.

    Each step is a real message, consumed and acknowledged as in production, with
    the test's `saga_store`. Yields the worker (a ``WorkController``); it is stopped,
    and the app's broker, pools and settings restored, after the test.
    """
    from celery.contrib.testing.worker import start_worker
    from kombu.asynchronous import set_event_loop

    if "saga_eager" in request.fixturenames:
        pytest.fail(
            f"{request.node.nodeid} uses both saga_eager and saga_worker: a test runs its "
            "sagas either inline (saga_eager) or on a worker (saga_worker), pick one",
            pytrace=False,
        )
    parameters = {**WORKER_DEFAULTS, **saga_worker_parameters}
    with (
        _memory_broker(saga_app),
        _settings(
            saga_app,
            task_always_eager=False,
            saga_backend=saga_store,
            saga_compensation_retry_backoff=0,
            broker_connection_retry_on_startup=True,
        ),
    ):
        # Celery 5.3 reuses kombu's process-wide event loop, which still holds the
        # timer of the worker that made it: a later worker's countdown messages
        # (retry backoff) would never run. Each worker gets a loop of its own.
        set_event_loop(None)
        try:
            with start_worker(saga_app, **parameters) as worker:
                yield worker
        finally:
            set_event_loop(None)


# -- assertions -------------------------------------------------------------------------


def assert_steps(result: Any, expected: Sequence[StepStatus | str]) -> None:
    """Assert the status of every step of a saga, in plan order.

    `result` is a `SagaResult`, a `SagaExecution`, or an outcome error of
    ``result.get()`` (`SagaCompensated`, `SagaFailed`, ...); `expected` holds one
    `StepStatus` or its value (``"success"``, ``"compensated"``, ...) per step.
    On a mismatch the message shows the whole stored record.
    """
    __tracebackhide__ = True
    execution = _execution(result)
    wanted = [_status(value) for value in expected]
    seen = [step.status for step in execution.steps]
    if seen != wanted:
        raise AssertionError(
            f"steps of saga {execution.saga_name!r} {execution.saga_id}:\n"
            f"  expected {[s.value for s in wanted]}\n"
            f"  got      {[s.value for s in seen]}\n"
            f"{describe(execution)}"
        )


def assert_compensated(result: Any, expected: Sequence[int]) -> None:
    """Assert which steps were compensated, and that their compensations started in this order.

    `expected` holds step indexes (plan positions, from 0), e.g. ``[2, 0]`` when the
    third and then the first step were undone. Steps whose compensation failed or
    never ran are not compensated. On a mismatch the message shows the whole record.
    """
    __tracebackhide__ = True
    execution = _execution(result)
    compensated = sorted(
        (s for s in execution.steps if s.status is StepStatus.COMPENSATED),
        key=lambda s: (_first_of(s.comp_started_at, s.comp_finished_at), s.index),
    )
    seen = [s.index for s in compensated]
    if seen != list(expected):
        raise AssertionError(
            f"compensated steps of saga {execution.saga_name!r} {execution.saga_id}, "
            "in the order their compensations started:\n"
            f"  expected {list(expected)}\n"
            f"  got      {seen}\n"
            f"{describe(execution)}"
        )


def describe(execution: SagaExecution) -> str:
    """The whole record: its fields that are set, then each step's, in plan order.

    Step fields that hold their default (no retries, no error...) are left out.
    """
    lines = [f"saga {execution.saga_name!r} {execution.saga_id}: {execution.status.value}"]
    header = execution.header_dict()
    for name in ("saga_id", "saga_name", "status"):
        header.pop(name)
    lines += [f"  {name}: {value!r}" for name, value in header.items() if _is_set(value)]
    for step in execution.steps:
        lines.append(_describe_step(step))
    return "\n".join(lines)


# -- internals --------------------------------------------------------------------------


@contextmanager
def _settings(app: Celery, **values: Any) -> Iterator[None]:
    """Set Celery settings for the block, then put each back (unset ones unset again)."""
    conf = app.conf
    saved = {name: (name in conf.changes, conf.changes.get(name)) for name in values}
    conf.update(values)
    try:
        yield
    finally:
        for name, (was_set, old) in saved.items():
            if was_set:
                conf[name] = old
            else:
                conf.changes.pop(name, None)


@contextmanager
def _memory_broker(app: Celery) -> Iterator[None]:
    """Send the app's messages to kombu's in-memory transport for the block.

    The app keeps its connection pool (``app.pool``) and producer pool
    (``app.amqp.producer_pool``) once made, bound to the broker of that time, and
    Celery reads the ``CELERY_BROKER_*`` environment variables before ``broker_url``:
    both are set aside for the block, and put back after it. The memory transport's
    queues are process-wide, so they are purged before and after.
    """
    amqp = app.amqp
    pools = (app._pool, amqp._producer_pool)
    with pytest.MonkeyPatch.context() as env:
        for name in BROKER_ENVIRONMENT:
            env.delenv(name, raising=False)
        with _settings(app, **copy.deepcopy(MEMORY_BROKER)):
            app._pool = amqp._producer_pool = None
            try:
                app.control.purge()
                yield
            finally:
                try:
                    app.control.purge()  # what the test left unconsumed
                finally:
                    app._pool, amqp._producer_pool = pools


def _execution(result: Any) -> SagaExecution:
    if isinstance(result, SagaExecution):
        return result
    if isinstance(result, SagaResult):
        found = result.execution
        if found is None:
            raise AssertionError(
                f"saga {result.saga_id} has no record in its store {result.backend!r}: "
                "was it run on another store (the saga's own backend=, or another app)?"
            )
        return found
    execution = getattr(result, "execution", None)  # SagaCompensated, SagaFailed, ...
    if isinstance(execution, SagaExecution):
        return execution
    raise TypeError(
        "expected a SagaResult, a SagaExecution or an error raised by SagaResult.get() "
        f"(SagaCompensated, SagaFailed, ...), got {type(result).__name__}: {result!r}"
    )


def _status(value: StepStatus | str) -> StepStatus:
    try:
        return StepStatus(value)
    except ValueError:
        known = ", ".join(repr(s.value) for s in StepStatus)
        raise ValueError(f"{value!r} is not a step status; one of {known}") from None


def _first_of(*times: float | None) -> float:
    return next((t for t in times if t is not None), math.inf)


def _is_set(value: Any) -> bool:
    return value is not None and value != {} and value != [] and value != ""


def _describe_step(step: StepRecord) -> str:
    data = step.to_dict()
    head = (
        f"  step {data.pop('index')} {data.pop('task_name')!r} "
        f"(stage {data.pop('stage')}, {data.pop('kind')}): {data.pop('status')}"
    )
    rest = [
        f"{name}={value!r}" for name, value in data.items() if value != _STEP_DEFAULTS.get(name)
    ]
    return "\n      ".join([head, *rest]) if rest else head


#: A step's fields that keep their default are left out of `describe` (0 retries...).
_STEP_DEFAULTS = {f.name: f.default for f in fields(StepRecord) if f.default is not MISSING}
