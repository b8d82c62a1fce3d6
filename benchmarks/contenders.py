"""The contenders: this project's sagas, plain Celery chains, celery-saga 0.1.1, DBOS.

`Dbos` (W6, W8) is DBOS's workflows of five no-op steps on PostgreSQL, run in the
process of its driver (`dbos_driver`, in a venv of its own): DBOS has no broker and
no worker, so its CPU is all counted as the worker's.

`TracedSaga` (W10) is this project with celery-saga's OpenTelemetry instrumentation on:
its worker starts with ``CELERY_SAGA_BENCH_OTEL=1`` and the harness, its producer,
turns the instrumentation on for its runs only (`bench_app.instrument_tracing`), so the
other contenders' sagas are started without it.

`NestedSaga` (W7) is this project running the same five no-op steps as a parent saga
whose middle step is a child saga of three: it shares the app and worker of the flat
saga's contender.

Each contender starts work the way its users would and learns that it finished the
same way as the others: the caller reads the record of the oldest unfinished item
(saga record, or the chain's last result) every `processes.POLL` seconds, moving on
as soon as it is finished. That adds one read per poll to the store or result
backend, the same for every contender, and nothing to the workers.

After every run, not timed, the contender deletes what the run left (saga records,
task results), so each repetition starts from the same, empty, state: a store that
slows down as it fills would otherwise be slower in every repetition than in the one
before. For the nested saga that includes the child executions (each its own record,
listed by ``parent_id``). W8 asks a run to keep what it left (``keep=True``), measures
it, then calls `forget` with the run's ids.

W2's "lost outputs": each fan-out step adds ``"<i>:<n>"`` to a Redis set when it
runs (`bench_tasks.fan`). Once every saga finished, a saga counts as having lost an
output when a step that ran has no ``out<n>`` in the record its contender keeps:
this project's state store, 0.1.1's ``celery_saga:<id>`` JSON record, or for the
plain chain the step's result in the result backend.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from bench_app import BenchApp
from celery import chain, group
from celery.exceptions import TimeoutError as CeleryTimeoutError
from processes import POLL, DbosDriver, OrigDriver, Worker, group_cpu_seconds

from celery_saga import Saga
from celery_saga.config import backend_for
from celery_saga.models import SagaStatus


@dataclass
class Run:
    """One timed run of one contender."""

    seconds: float
    #: Sagas (or chains) that did not end COMPLETED (SUCCESS for chains).
    not_completed: int = 0
    #: Sagas whose record lacks the output of a step that ran (W2 only).
    lost: int | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    #: CPU seconds used meanwhile by the contender's worker processes and its caller.
    worker_cpu: float = 0.0
    caller_cpu: float = 0.0
    #: What the run left, for `forget` (``keep=True`` only): saga, workflow or task ids.
    ids: list[str] = field(default_factory=list)


class Contender(Protocol):
    """What every workload asks of a contender."""

    key: str
    label: str

    def throughput(self, saga: str, n: int, ran: str | None = None, *, keep: bool = False) -> Run:
        """Start `n` sagas of `saga`, return when all finished.

        `saga` is ``five``, ``fanout`` or ``steps<L>`` (L no-op steps, W4). With
        `keep`, what the run left stays until `forget` gets the run's `Run.ids`.
        """
        ...

    def forget(self, ids: list[str]) -> None:
        """Delete what a run kept (the ids of its `Run`)."""
        ...

    def latency(self, n: int) -> list[float]:
        """Run `n` five-step sagas one at a time, blocking on each; their seconds."""
        ...

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (its worker processes, its caller process)."""
        ...


class _InProcessCaller:
    """CPU accounting for contenders whose caller is this process."""

    worker: Worker

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (the worker's processes, this process)."""
        return self.worker.cpu_seconds(), time.process_time()


def wait_in_order(ids: list[str], finished: Callable[[str], bool], timeout: float) -> int:
    """Poll the oldest unfinished id until all are finished; return how many never did."""
    deadline = time.monotonic() + timeout
    done = 0
    while done < len(ids):
        if finished(ids[done]):
            done += 1
        elif time.monotonic() > deadline:
            break
        else:
            time.sleep(POLL)
    return len(ids) - done


def ran_steps(marks: redis.Redis, key: str) -> dict[int, set[int]]:
    """Read and delete the set of ``"<i>:<n>"`` markers: saga i -> steps n that ran."""
    members = marks.smembers(key)
    marks.delete(key)
    ran: dict[int, set[int]] = defaultdict(set)
    for member in members:
        i, n = (member.decode() if isinstance(member, bytes) else member).split(":")
        ran[int(i)].add(int(n))
    return ran


def count_lost(
    ran: dict[int, set[int]], outputs: Iterable[tuple[int, dict[int, Any]]], expected: int
) -> int:
    """Sagas where a step that ran has no ``out<n>`` in its recorded output.

    `outputs` yields (saga number, {step n: recorded output}); a saga whose steps
    did not all run (fewer than `expected` markers) also counts, since the run
    then lost a step, not only its output.
    """
    lost = 0
    for i, recorded in outputs:
        steps = ran.get(i, set())
        missing = [
            n
            for n in steps
            if not isinstance(recorded.get(n), dict) or f"out{n}" not in recorded[n]
        ]
        if missing or len(steps) < expected:
            lost += 1
    return lost


class OurSaga(_InProcessCaller):
    """This project: a saga of the tasks, state in one of its stores, no result backend."""

    def __init__(
        self, key: str, label: str, bench: BenchApp, worker: Worker, marks: redis.Redis
    ) -> None:
        self.key, self.label, self.bench, self.marks = key, label, bench, marks
        self.worker = worker
        self.backend = backend_for(bench.app)

    def _definition(self, saga: str) -> Saga:
        """The saga this contender runs for the workload's `saga`."""
        if saga.startswith("steps"):
            return self.bench.long[int(saga[5:])]
        return self.bench.five if saga == "five" else self.bench.fanout

    def throughput(
        self,
        saga: str,
        n: int,
        ran: str | None = None,
        timeout: float = 600,
        *,
        keep: bool = False,
    ) -> Run:
        """Start `n` sagas, wait for them; for the fan-out saga, count lost outputs.

        A saga counts as completed when its own record (the one `run()` returned the
        id of: for a nested saga, the parent) is COMPLETED.
        """
        definition = self._definition(saga)
        extra = {"ran": ran} if saga == "fanout" else {}
        statuses: dict[str, int] = defaultdict(int)

        def finished(saga_id: str) -> bool:
            status = self.backend.get_status(saga_id)  # what SagaResult.status reads
            if status is None or not status.is_terminal:
                return False
            statuses[status.value] += 1
            return True

        started = time.perf_counter()
        ids = [definition.run(i=i, **extra).saga_id for i in range(n)]
        wait_in_order(ids, finished, timeout)  # the unfinished count as not completed
        seconds = time.perf_counter() - started
        run = Run(seconds, n - statuses[SagaStatus.COMPLETED.value], statuses=dict(statuses))
        if ran is not None:
            run.lost = count_lost(ran_steps(self.marks, ran), self._outputs(ids), 5)
        if keep:
            run.ids = ids
        else:
            self.forget(ids)
        return run

    def _outputs(self, ids: list[str]) -> Iterable[tuple[int, dict[int, Any]]]:
        for i, saga_id in enumerate(ids):
            execution = self.backend.get(saga_id)
            steps = execution.steps if execution is not None else []
            yield i, {record.index + 1: record.output for record in steps}

    def forget(self, ids: list[str]) -> None:
        """Delete the finished executions through the store's own API."""
        for saga_id in ids:
            self.backend.delete(saga_id)

    def latency(self, n: int, timeout: float = 60) -> list[float]:
        """`saga.run()` then `SagaResult.get()`, `n` times in a row."""
        latencies, ids = [], []
        for i in range(n):
            started = time.perf_counter()
            result = self._definition("five").run(i=i)
            result.get(timeout=timeout)
            latencies.append(time.perf_counter() - started)
            ids.append(result.saga_id)
        self.forget(ids)
        return latencies


class NestedSaga(OurSaga):
    """W7: this project's five no-op steps as ``bench.nested``: a child saga in the middle.

    It runs the workload's ``five`` as ``noop1``, the child saga ``bench.child``
    (``noop2``-``noop4``, its own execution), ``noop5``. Only the parent's record is
    polled, so a saga counts as completed only when the parent is COMPLETED; the
    cleanup deletes the children too, so the store is empty again after each run.
    """

    def _definition(self, saga: str) -> Saga:
        if saga != "five":
            raise ValueError(f"the nested saga has only the five no-op steps, not {saga!r}")
        return self.bench.nested

    def forget(self, ids: list[str]) -> None:
        """Delete each parent's child executions (all finished), then the parent."""
        for saga_id in ids:
            children: list[str] = []
            cursor: str | None = None
            while True:  # list them all first: deleting while paging could skip some
                page = self.backend.list(parent_id=saga_id, cursor=cursor)
                children += [child.saga_id for child in page.items]
                cursor = page.cursor
                if cursor is None:
                    break
            for child_id in children:
                self.backend.delete(child_id)
        super().forget(ids)


class TracedSaga(OurSaga):
    """W10: `OurSaga` with the saga instrumentation on in its producer (and its worker).

    Spans go through a BatchSpanProcessor to an exporter that drops them, in the
    worker and here alike; the instrumentation is on here only while this contender
    runs (the harness is every contender's producer).
    """

    def throughput(
        self,
        saga: str,
        n: int,
        ran: str | None = None,
        timeout: float = 600,
        *,
        keep: bool = False,
    ) -> Run:
        """`OurSaga.throughput` with the instrumentation on in this process."""
        with _tracing():
            return super().throughput(saga, n, ran, timeout, keep=keep)

    def latency(self, n: int, timeout: float = 60) -> list[float]:
        """`OurSaga.latency` with the instrumentation on in this process."""
        with _tracing():
            return super().latency(n, timeout)


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """The saga instrumentation on in this process for the block, off after it."""
    from bench_app import instrument_tracing, uninstrument_tracing

    instrument_tracing()
    try:
        yield
    finally:
        uninstrument_tracing()


class PlainChain(_InProcessCaller):
    """The same tasks as a plain Celery chain, with a Redis result backend."""

    def __init__(
        self, key: str, label: str, bench: BenchApp, worker: Worker, marks: redis.Redis
    ) -> None:
        self.key, self.label, self.bench, self.marks = key, label, bench, marks
        self.worker = worker
        self.results = redis.Redis.from_url(str(bench.app.conf.result_backend))
        #: Seconds after which a chain's ``get()`` is looked at (see `latency`).
        self.stuck_after = 15.0
        self.stuck_gets = 0

    def _meta(self, task_id: str) -> dict[str, Any] | None:
        raw = self.results.get(f"celery-task-meta-{task_id}")
        return None if raw is None else dict(json.loads(raw))

    def throughput(
        self,
        saga: str,
        n: int,
        ran: str | None = None,
        timeout: float = 600,
        *,
        keep: bool = False,
    ) -> Run:
        """Start `n` chains; done when the last task (all four of the group) has a result.

        With `keep`, the results of every step stay (`Run.ids`: their task ids).
        """
        noops, fans = self.bench.noops, self.bench.fans
        started = time.perf_counter()
        steps: list[list[str]] = []  # task ids of each chain's steps, in order
        if saga == "five":
            for _ in range(n):
                result = chain(*[t.s() for t in noops]).apply_async()
                steps.append(_chain_ids(result))
        else:
            for i in range(n):
                result = chain(
                    fans[0].si(i=i, ran=ran), group(t.si(i=i, ran=ran) for t in fans[1:])
                ).apply_async()
                steps.append([result.parent.id, *(child.id for child in result.results)])
        # Done when the last task has a result (for the fan-out, all four of the group).
        last = {ids[-1]: ids[1:] if saga == "fanout" else ids[-1:] for ids in steps}

        def finished(last_id: str) -> bool:
            keys = [f"celery-task-meta-{task_id}" for task_id in last[last_id]]
            return int(self.results.exists(*keys)) == len(keys)

        unfinished = wait_in_order(list(last), finished, timeout)
        seconds = time.perf_counter() - started
        metas = {tid: self._meta(tid) for chain_steps in steps for tid in chain_steps}
        failed = sum(
            1
            for chain_steps in steps
            if any((metas[t] or {}).get("status") != "SUCCESS" for t in last[chain_steps[-1]])
        )
        run = Run(seconds, max(failed, unfinished))
        if ran is not None:
            outputs = (
                (i, {n + 1: (metas[t] or {}).get("result") for n, t in enumerate(chain_steps)})
                for i, chain_steps in enumerate(steps)
            )
            run.lost = count_lost(ran_steps(self.marks, ran), outputs, 5)
        if keep:
            run.ids = list(metas)
        else:
            self.forget(list(metas))
        return run

    def forget(self, task_ids: list[str]) -> None:
        """Delete the results of these tasks from the result backend."""
        for i in range(0, len(task_ids), 500):
            self.results.delete(*[f"celery-task-meta-{t}" for t in task_ids[i : i + 500]])

    def latency(self, n: int, timeout: float = 60) -> list[float]:
        """``chain(...).apply_async()`` then ``AsyncResult.get()``, `n` times in a row.

        A ``get()`` that does not return within `stuck_after` seconds although the chain's
        result is stored (seen twice under CI load with Celery 5.7's Redis result
        backend) is a fault of the waiting client, not a latency of the chain: that
        chain is left out of the figures and counted in `stuck_gets`.
        """
        latencies, task_ids = [], []
        for _ in range(n):
            started = time.perf_counter()
            result = chain(*[t.s() for t in self.bench.noops]).apply_async()
            try:
                result.get(timeout=min(timeout, self.stuck_after))
            except CeleryTimeoutError:
                meta = self._meta(result.id)
                if meta is None or meta.get("status") != "SUCCESS":
                    result.get(timeout=max(timeout - self.stuck_after, 0.1))  # a slow chain
                else:
                    self.stuck_gets += 1
                    print(f"  chain {result.id}: get() stuck, result stored; left out")
                    task_ids += _chain_ids(result)
                    continue
            latencies.append(time.perf_counter() - started)
            task_ids += _chain_ids(result)
        self.forget(task_ids)
        return latencies


def _chain_ids(result: Any) -> list[str]:
    """The task ids of a chain's steps, first to last, from the last one's result."""
    ids = []
    while result is not None:
        ids.append(result.id)
        result = result.parent
    return ids[::-1]


class Original:
    """celery-saga 0.1.1 from PyPI, driven by `orig_driver` in its own venv."""

    def __init__(
        self,
        key: str,
        label: str,
        worker: Worker,
        driver: OrigDriver,
        store: redis.Redis,
        marks: redis.Redis,
        get_interval: float,
    ) -> None:
        self.key, self.label, self.worker, self.driver = key, label, worker, driver
        self.store, self.marks, self.get_interval = store, marks, get_interval

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (its worker's processes, its driver process)."""
        return self.worker.cpu_seconds(), group_cpu_seconds(self.driver.proc.pid)

    def _record(self, saga_id: str) -> dict[str, Any]:
        raw = self.store.get(f"celery_saga:{saga_id}")
        return {} if raw is None else dict(json.loads(raw))

    def throughput(
        self,
        saga: str,
        n: int,
        ran: str | None = None,
        timeout: float = 600,
        *,
        keep: bool = False,
    ) -> Run:
        """Its sagas, started and waited for by its driver; lost outputs read from its records."""
        answer = self.driver.call(
            op="throughput", saga=saga, n=n, ran=ran or "", timeout=timeout, poll=POLL
        )
        statuses: dict[str, int] = answer["statuses"]
        run = Run(answer["seconds"], n - statuses.get("completed", 0), statuses=statuses)
        if ran is not None:
            outputs = (
                (
                    i,
                    {
                        step["step_index"] + 1: step.get("output")
                        for step in self._record(saga_id).get("steps", [])
                    },
                )
                for i, saga_id in enumerate(answer["ids"])
            )
            run.lost = count_lost(ran_steps(self.marks, ran), outputs, 5)
        if keep:
            run.ids = list(answer["ids"])
        else:
            self.forget(answer["ids"])
        return run

    def forget(self, ids: list[str]) -> None:
        """Delete its records (what its ``RedisSagaBackend.delete`` does, without a key)."""
        for i in range(0, len(ids), 500):
            self.store.delete(*[f"celery_saga:{saga_id}" for saga_id in ids[i : i + 500]])

    def latency(self, n: int, timeout: float = 60) -> list[float]:
        """``saga.run()`` then its ``SagaResult.get(timeout, interval)``, `n` times."""
        answer = self.driver.call(op="latency", n=n, interval=self.get_interval, timeout=timeout)
        self.forget(answer["ids"])
        return list(answer["latencies"])


class Dbos:
    """DBOS workflows of five no-op steps on PostgreSQL, run by `dbos_driver` in its venv.

    The driver starts the workflows, runs them (in its threads: DBOS has no worker)
    and waits for them, so all its CPU counts as the worker's and the caller's is 0.
    """

    def __init__(self, key: str, label: str, driver: DbosDriver) -> None:
        self.key, self.label, self.driver = key, label, driver

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (the driver process, nothing else)."""
        return self.driver.cpu_seconds(), 0.0

    def throughput(
        self,
        saga: str,
        n: int,
        ran: str | None = None,
        timeout: float = 600,
        *,
        keep: bool = False,
    ) -> Run:
        """`n` workflows started at once with ``DBOS.start_workflow``, all results awaited."""
        if saga != "five":
            raise ValueError(f"the DBOS contender runs only the five no-op steps, not {saga!r}")
        answer = self.driver.call(op="throughput", n=n, keep=keep)
        failed = int(answer["failed"])
        statuses = {"SUCCESS": n - failed, **({"ERROR": failed} if failed else {})}
        return Run(
            answer["seconds"], failed, statuses=statuses, ids=list(answer["ids"]) if keep else []
        )

    def forget(self, ids: list[str]) -> None:
        """Delete the workflows through DBOS's ``delete_workflows``."""
        self.driver.call(op="delete", ids=ids)

    def latency(self, n: int, timeout: float = 60) -> list[float]:
        """The workflow called `n` times in a row, each call blocking until it finished."""
        return list(self.driver.call(op="latency", n=n)["latencies"])
