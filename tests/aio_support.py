"""What the asyncio tests share: a worker process of `aio_app`, and loop-lag measurements.

The lag of the test's event loop is measured by `LoopLag` (the conformance kit's probe:
a coroutine that sleeps 5 ms in a loop and records the largest overshoot). Alongside,
`MachineNoise` runs the same probe in an idle process of its own: what the machine
alone costs, printed with every measurement so a loaded CI runner can be told apart
from a loop that was really blocked.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import BROKER_DB, REDIS_URL, STORE_DB, poll

from celery_saga.models import SagaStatus, StepStatus
from celery_saga.testing.waiting import LoopLag

TESTS = Path(__file__).resolve().parent

#: The loop may stall at most this long while 200 sagas are started and awaited.
MAX_LOOP_LAG = 0.050

_IDLE_PROBE = """
import asyncio, sys, time
worst = 0.0
async def main():
    global worst
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)
    while not closed.done():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        worst = max(worst, time.perf_counter() - started - 0.005)
asyncio.run(main())
print(worst)
"""


class MachineNoise:
    """The worst lag of an idle event loop in another process, over a `with` block."""

    def __init__(self) -> None:
        self.worst: float | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> MachineNoise:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _IDLE_PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.2)  # let it start probing
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=30)
        try:
            self.worst = float(out.strip())
        except ValueError:
            self.worst = None


def ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.1f} ms"


class GcPauses:
    """The garbage collector's pauses over a `with` block (every thread stops for them)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.full = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.longest = max(self.longest, time.perf_counter() - self._started)
        self.full += info["generation"] == 2

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


@dataclass
class Batch:
    """What `run_batch` measured."""

    outputs: list[Any]
    seconds: float
    lag: LoopLag
    noise: float | None
    warm_up_lag: LoopLag
    gc: GcPauses

    def report(self, what: str) -> str:
        return (
            f"{what}: {len(self.outputs)} sagas in {self.seconds:.2f}s; max loop lag "
            f"{ms(self.lag.worst)} over {self.lag.samples} probe sleeps (a control loop in "
            f"another thread: {ms(self.lag.control)}; an idle loop in "
            f"another process meanwhile: {ms(self.noise)}; during the warm-up batch before: "
            f"{ms(self.warm_up_lag.worst)}; longest GC pause {ms(self.gc.longest)}, "
            f"{self.gc.full} full collections)"
        )


def run_batch(saga: Any, n: int, *, warm_up: int = 10, timeout: float = 120) -> Batch:
    """Start `n` sagas with `arun` and await each with `aget`, all at once on one loop.

    A batch of `warm_up` sagas runs first on the same loop, as in a server that has
    served a few requests: the pools of store connections, broker producers and
    executor threads have grown to what concurrent use needs. The lag of the loop is
    measured during the main batch (and reported for the warm-up too).

    The objects alive before the batch are frozen (`gc.freeze`), as a server does after
    starting: a full garbage collection stops every thread, the loop's included, for as
    long as it takes to scan the heap, and this test process's heap (pytest and every
    test module it imported) made such a pause alone last 45 to 55 ms. The collector's
    pauses during the batch are reported with the lag.
    """
    lag, warm_up_lag = LoopLag(), LoopLag()

    async def one(i: int) -> Any:
        result = await saga.arun(order_id=f"o-{i}", amount=i)
        return await result.aget(timeout=timeout)

    async def batch(count: int) -> list[Any]:
        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def main() -> tuple[list[Any], float]:
        await warm_up_lag.measure(batch(warm_up))
        started = time.monotonic()
        outputs = await lag.measure(batch(n))
        return outputs, time.monotonic() - started

    gc.collect()
    gc.freeze()
    try:
        with MachineNoise() as noise, GcPauses() as pauses:
            outputs, seconds = asyncio.run(main())
    finally:
        gc.unfreeze()
    return Batch(outputs, seconds, lag, noise.worst, warm_up_lag, pauses)


class AioWorker:
    """A real ``celery -A aio_app worker`` process on `broker` and `store`."""

    def __init__(
        self, broker: str, store: str, queue: str, logfile: Path, concurrency: int = 2
    ) -> None:
        import redis

        self.ready_key = f"aio-ready-{uuid.uuid4().hex[:10]}"
        self._redis = redis.Redis.from_url(f"{REDIS_URL}/{STORE_DB}")
        env = {
            **os.environ,
            "AIO_BROKER": broker,
            "AIO_STORE": store,
            "AIO_QUEUE": queue,
            "AIO_READY": f"{REDIS_URL}/{STORE_DB}|{self.ready_key}",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        self.logfile = logfile
        self._log = open(logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "aio_app", "worker",
                "-P", "prefork", "-c", str(concurrency), "-Q", queue, "-l", "warning",
                "-n", f"aio-{self.ready_key}@%h",
                "--without-mingle", "--without-gossip", "--without-heartbeat",
            ],
            env=env,
            cwd=str(TESTS),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the worker exited with {self.proc.returncode}:\n{self.log()}")
            return bool(self._redis.get(self.ready_key))

        poll(ready, timeout, pytest.fail, "the aio_app worker to start consuming")

    def log(self) -> str:
        self._log.flush()
        return self.logfile.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()
        self._redis.delete(self.ready_key)
        self._redis.close()


def broker_url() -> str:
    """The Redis broker of the asyncio tests (the tests' broker database)."""
    return f"{REDIS_URL}/{BROKER_DB}"


def delete_queue(queue: str) -> None:
    """Remove a test's queue (and anything left in it) from the Redis broker."""
    import redis

    client = redis.Redis.from_url(broker_url())
    try:
        client.delete(queue)
    finally:
        client.close()


#: What `watch()` yields for the three-step order saga on a real worker, in order.
WATCHED_ORDER: list[Any] = [
    SagaStatus.RUNNING,
    (0, StepStatus.RUNNING),
    (0, StepStatus.SUCCESS),
    (1, StepStatus.RUNNING),
    (1, StepStatus.SUCCESS),
    (2, StepStatus.RUNNING),
    (2, StepStatus.SUCCESS),
    SagaStatus.COMPLETED,
]


def watch_one(saga: Any) -> tuple[list[Any], list[Any]]:
    """Start one order saga with `arun` and follow it with `watch()`: (what each update
    is about, the updates), the first as (step, status) pairs or the saga's status."""

    async def follow() -> list[Any]:
        result = await saga.arun(order_id="w-1", amount=5, pause=0.3)
        return [update async for update in result.watch(interval=0.05)]

    updates = asyncio.run(follow())
    seen = [(u.step.index, u.step.status) if u.step else u.status for u in updates]
    return seen, updates
