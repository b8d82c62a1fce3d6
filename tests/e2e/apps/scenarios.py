"""Tasks and sagas used by the end-to-end tests, built on any Celery app.

`build(app, journal)` defines the step tasks (each records what it did in the
journal, keyed by saga id, so a test can check which steps and compensations ran
and in which order) and the sagas of every scenario. Worker processes import
`worker_app`, which calls `build` on an app configured from the environment.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from celery import Celery
from composition_scenarios import build_composition
from pydantic import BaseModel

from celery_saga import (
    RetryPolicy,
    Saga,
    StepResponse,
    current_step,
    parallelize,
    saga,
    saga_step,
    step,
    transform,
)


class Journal:
    """Where tasks record their side effects: a Redis list per saga, or memory."""

    def __init__(self, redis_url: str | None = None, prefix: str = "journal:") -> None:
        self.prefix = prefix
        self._client: Any = None
        if redis_url:
            import redis

            self._client = redis.Redis.from_url(redis_url, decode_responses=True)
        self._memory: dict[str, list[str]] = defaultdict(list)
        self._counters: dict[str, int] = {}
        self._flags: dict[str, bool] = {}
        self._lock = threading.Lock()

    def record(self, event: str) -> None:
        """Append `event` to the journal of the saga whose step is running."""
        header = current_step()
        saga_id = header.saga_id if header else "none"
        if self._client is not None:
            self._client.rpush(f"{self.prefix}{saga_id}", event)
        else:
            with self._lock:
                self._memory[saga_id].append(event)

    def append(self, key: str, event: str) -> None:
        """Append `event` to the list `key` (one list across the levels of nested sagas)."""
        if self._client is not None:
            self._client.rpush(f"{self.prefix}log:{key}", event)
        else:
            with self._lock:
                self._memory[f"log:{key}"].append(event)

    def log(self, key: str) -> list[str]:
        """The events appended to `key`, in order."""
        if self._client is not None:
            return list(self._client.lrange(f"{self.prefix}log:{key}", 0, -1))
        with self._lock:
            return list(self._memory[f"log:{key}"])

    def incr(self, key: str, amount: int = 1) -> int:
        """Count something (shared between processes when the journal is in Redis)."""
        if self._client is not None:
            return int(self._client.incrby(f"{self.prefix}n:{key}", amount))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount
            return self._counters[key]

    def set_flag(self, key: str, value: bool) -> None:
        """Turn a switch (a fault, a gate) on or off."""
        if self._client is not None:
            if value:
                self._client.set(f"{self.prefix}f:{key}", 1)
            else:
                self._client.delete(f"{self.prefix}f:{key}")
            return
        with self._lock:
            self._flags[key] = value

    def flag(self, key: str) -> bool:
        """Whether a switch is on."""
        if self._client is not None:
            return bool(self._client.exists(f"{self.prefix}f:{key}"))
        with self._lock:
            return self._flags.get(key, False)

    def effect(self, kind: str, member: str) -> None:
        """Record a side effect idempotently (a set: doing it twice records it once)."""
        if self._client is not None:
            self._client.sadd(f"{self.prefix}{kind}", member)
            return
        with self._lock:
            self._memory[f"set:{kind}"].append(member)

    def effects(self, kind: str) -> set[str]:
        """Every side effect of one kind recorded so far."""
        if self._client is not None:
            return set(self._client.smembers(f"{self.prefix}{kind}"))
        with self._lock:
            return set(self._memory[f"set:{kind}"])

    def count(self, key: str) -> int:
        """The value of a counter made by `incr`."""
        if self._client is not None:
            return int(self._client.get(f"{self.prefix}n:{key}") or 0)
        with self._lock:
            return self._counters.get(key, 0)

    def events(self, saga_id: str) -> list[str]:
        """Everything recorded for one saga, in order."""
        if self._client is not None:
            return list(self._client.lrange(f"{self.prefix}{saga_id}", 0, -1))
        with self._lock:
            return list(self._memory[saga_id])


class Refund(BaseModel):
    """Compensation data of `charge`, read back as a model by `refund`."""

    txn: str
    amount: float


@dataclass
class Scenarios:
    """The sagas of every scenario, and the tasks they use."""

    app: Celery
    journal: Journal
    five: Saga
    parallel: Saga
    permanent: Saga
    transforms: Saga
    functional: Saga
    order: Saga
    by_name: Saga
    bad_output: Saga
    wide: Saga
    flaky_compensation: Saga
    broken_compensation: Saga
    deadline: Saga
    gated: Saga
    retrying: Saga
    big_output: Saga
    crash: Saga
    timeout_hard: Saga
    timeout_soft: Saga
    tasks: dict[str, Any]
    leases: Any = None  # lease_scenarios.LeaseScenarios, set by worker_app.make_app
    composition: Any = None  # composition_scenarios.CompositionScenarios


def build(app: Celery, journal: Journal, *, tag: str = "") -> Scenarios:
    """Define the scenario tasks on `app` and the sagas using them."""
    t: dict[str, Any] = {}
    name = f"e2e{tag}"

    def undo_task(n: int) -> Any:
        @app.task(shared=False, name=f"{name}.undo{n}")
        def undo(data: Any) -> None:
            journal.record(f"undo{n}")

        return undo

    def do_task(n: int, undo: Any) -> Any:
        @saga_step(compensate=undo)
        @app.task(shared=False, name=f"{name}.s{n}")
        def do(**kw: Any) -> dict[str, Any]:
            journal.record(f"do{n}")
            if kw.get("fail") == n:
                raise RuntimeError(f"step {n} was told to fail")
            return {f"out{n}": n}

        return do

    for n in range(1, 6):
        t[f"undo{n}"] = undo_task(n)
        t[f"s{n}"] = do_task(n, t[f"undo{n}"])

    five = Saga(f"{name}.five")
    for n in range(1, 6):
        five.add_step(t[f"s{n}"])

    @app.task(shared=False, name=f"{name}.p_undo")
    def p_undo(data: Any) -> None:
        journal.record(f"p_undo{data['member']}")

    @app.task(shared=False, name=f"{name}.member")
    def member(**kw: Any) -> dict[str, Any]:
        idx = kw["member_index"]
        journal.record(f"member{idx}")
        if kw.get("fail_member") == idx:
            raise RuntimeError(f"member {idx} was told to fail")
        return StepResponse(output={f"m{idx}": True}, compensation_data={"member": idx})

    def member_n(i: int) -> Any:
        @app.task(shared=False, name=f"{name}.member{i}")
        def run_member(**kw: Any) -> Any:
            return member.run(**{**kw, "member_index": i})

        return run_member

    members = [member_n(i) for i in range(4)]
    parallel = (
        Saga(f"{name}.parallel")
        .add_step(t["s1"])
        .add_parallel(*[(m, p_undo) for m in members])
        .add_step(t["s5"])
    )

    @app.task(shared=False, name=f"{name}.cleanup")
    def cleanup(data: Any) -> None:
        journal.record(f"cleanup:{sorted(data['processed'])}")

    @saga_step(compensate=cleanup)
    @app.task(
        shared=False,
        name=f"{name}.batch",
        autoretry_for=(Exception,),
        max_retries=3,
        default_retry_delay=0,
    )
    def batch(**kw: Any) -> Any:
        journal.record("batch")
        processed = []
        for item in kw["items"]:
            if item < 0:
                raise StepResponse.permanent_failure(
                    "invalid item found", compensation_data={"processed": processed}
                )
            processed.append(item)
        return {"processed": processed}

    permanent = Saga(f"{name}.permanent").add_step(t["s1"]).add_step(batch).add_step(t["s5"])

    @app.task(shared=False, name=f"{name}.echo")
    def echo(**kw: Any) -> dict[str, Any]:
        journal.record("echo")
        return {"echoed": dict(sorted(kw.items()))}

    transforms = (
        Saga(f"{name}.transforms")
        .add_step(t["s1"])
        .add_transform(lambda ctx: {**ctx, "amount_cents": int(ctx["amount"] * 100)})
        .add_step(echo, no_compensation=True)
        .add_step(
            t["s2"],
            input=lambda ctx: {"order_id": ctx["order_id"], "cents": ctx["amount_cents"]},
        )
    )

    @app.task(shared=False, name=f"{name}.validate")
    def validate(**kw: Any) -> dict[str, Any]:
        journal.record("validate")
        if kw["amount"] <= 0:
            raise ValueError("amount must be positive")
        return {"validated": True, "amount": kw["amount"]}

    @app.task(shared=False, name=f"{name}.refund")
    def refund(compensation_data: Refund) -> None:
        assert isinstance(compensation_data, Refund)
        journal.record(f"refund:{compensation_data.txn}:{compensation_data.amount}")

    @saga_step(compensate=refund)
    @app.task(shared=False, name=f"{name}.charge")
    def charge(**kw: Any) -> StepResponse:
        journal.record("charge")
        if kw.get("decline"):
            raise RuntimeError("card declined")
        txn = f"T-{kw['order_id']}"
        return StepResponse(
            output={"transaction_id": txn}, compensation_data=Refund(txn=txn, amount=kw["amount"])
        )

    @app.task(shared=False, name=f"{name}.release")
    def release(data: Any) -> None:
        journal.record(f"release:{data['reservation']}")

    @saga_step(compensate=release)
    @app.task(shared=False, name=f"{name}.reserve")
    def reserve(**kw: Any) -> dict[str, Any]:
        journal.record("reserve")
        if kw.get("out_of_stock"):
            raise RuntimeError("out of stock")
        return {"reservation": f"R-{kw['order_id']}"}

    @saga_step(no_compensation=True)
    @app.task(shared=False, name=f"{name}.confirm")
    def confirm(**kw: Any) -> dict[str, Any]:
        journal.record("confirm")
        return {"confirmed": True}

    @saga(f"{name}.functional")
    def functional(input: Any) -> Any:
        order = step(validate, input)
        payment, reservation = parallelize(step(charge, order), step(reserve, order))
        step(confirm, transform((payment, reservation), lambda p, r: {**p, **r}))
        return transform(
            (payment, reservation),
            lambda p, r: {"txn": p["transaction_id"], "res": r["reservation"]},
        )

    order = (
        Saga(f"{name}.order")
        .add_step(validate, no_compensation=True)
        .add_parallel(charge, reserve)
        .add_step(confirm)
    )

    @app.task(shared=False, name=f"{name}.svc_b.reserve")
    def svc_b_reserve(**kw: Any) -> dict[str, Any]:
        journal.record("svc_b.reserve")
        if kw.get("fail") == "svc_b":
            raise RuntimeError("svc_b refused")
        return {"svc_b": f"B-{kw['order_id']}"}

    @app.task(shared=False, name=f"{name}.svc_b.release")
    def svc_b_release(data: Any) -> None:
        journal.record(f"svc_b.release:{data['svc_b']}")

    by_name = (
        Saga(f"{name}.by_name", app=app)
        .add_step(t["s1"])
        .add_step(f"{name}.svc_b.reserve", compensate=f"{name}.svc_b.release")
        .add_step(t["s3"])
    )

    @app.task(shared=False, name=f"{name}.bad_output")
    def bad_output(**kw: Any) -> dict[str, Any]:
        journal.record("bad_output")
        return {"when": time}  # a module object: not JSON

    bad = Saga(f"{name}.bad_output").add_step(t["s1"]).add_step(bad_output).add_step(t["s5"])

    @app.task(shared=False, name=f"{name}.noop")
    def noop(**kw: Any) -> dict[str, Any]:
        return {f"n{current_step().index}": 1}  # type: ignore[union-attr]

    def wide_member(i: int) -> Any:
        @app.task(shared=False, name=f"{name}.wide{i}")
        def w(**kw: Any) -> dict[str, Any]:
            return {f"w{i}": i}

        return w

    wide = Saga(f"{name}.wide").add_step(noop).add_parallel(*[wide_member(i) for i in range(20)])

    @app.task(shared=False, name=f"{name}.flaky_undo")
    def flaky_undo(data: Any) -> None:
        header = current_step()
        tries = journal.incr(f"flaky:{header.saga_id if header else '-'}")
        journal.record(f"flaky_undo:try{tries}")
        if tries <= 2:
            raise ConnectionError(f"refund service unavailable (try {tries})")

    @saga_step(compensate=flaky_undo)
    @app.task(shared=False, name=f"{name}.flaky_step")
    def flaky_step(**kw: Any) -> dict[str, Any]:
        journal.record("flaky_step")
        return {"flaky": True}

    flaky_compensation = (
        Saga(f"{name}.flaky_compensation").add_step(t["s1"]).add_step(flaky_step).add_step(t["s3"])
    )

    @app.task(shared=False, name=f"{name}.broken_undo")
    def broken_undo(data: Any) -> None:
        journal.record("broken_undo")
        if journal.flag("refunds_broken"):
            raise RuntimeError("refund system is down")

    @saga_step(compensate=broken_undo)
    @app.task(shared=False, name=f"{name}.broken_step")
    def broken_step(**kw: Any) -> dict[str, Any]:
        journal.record("broken_step")
        return {"broken": True}

    broken_compensation = (
        Saga(f"{name}.broken_compensation")
        .add_step(t["s1"])
        .add_step(broken_step)
        .add_step(t["s3"])
    )

    @saga_step(compensate=t["undo2"])
    @app.task(shared=False, name=f"{name}.slow")
    def slow(**kw: Any) -> dict[str, Any]:
        journal.record("slow")
        time.sleep(kw.get("sleep", 1.5))  # the work this step does: it takes a while
        return {"slow": True}

    timeout_hard = (
        Saga(f"{name}.timeout_hard").add_step(t["s1"]).add_step(slow, options={"time_limit": 1})
    )
    timeout_soft = (
        Saga(f"{name}.timeout_soft")
        .add_step(t["s1"])
        .add_step(slow, options={"soft_time_limit": 0.5, "time_limit": 10})
    )
    t["slow"] = slow

    deadline = (
        Saga(f"{name}.deadline", deadline=1.0).add_step(t["s1"]).add_step(slow).add_step(t["s3"])
    )

    @saga_step(compensate=t["undo2"])
    @app.task(shared=False, name=f"{name}.gate")
    def gate(**kw: Any) -> dict[str, Any]:
        journal.record("gate:entered")
        deadline_at = time.monotonic() + 60
        while journal.flag(f"hold:{kw['hold']}") and time.monotonic() < deadline_at:
            time.sleep(0.01)  # the step waits for the test to release it
        journal.record("gate:left")
        return {"gated": True}

    gated = Saga(f"{name}.gated").add_step(t["s1"]).add_step(gate).add_step(t["s3"])

    @app.task(shared=False, name=f"{name}.flaky_forward")
    def flaky_forward(**kw: Any) -> dict[str, Any]:
        header = current_step()
        tries = journal.incr(f"forward:{header.saga_id if header else '-'}")
        journal.record(f"flaky_forward:try{tries}")
        if tries <= kw.get("fail_times", 2):
            raise ConnectionError(f"upstream unavailable (try {tries})")
        return {"tries": tries}

    retrying = (
        Saga(f"{name}.retrying")
        .add_step(t["s1"])
        .add_step(
            flaky_forward,
            no_compensation=True,
            retry=RetryPolicy(
                max_retries=3, backoff=0.01, jitter=False, retry_on=(ConnectionError,)
            ),
        )
    )

    @app.task(shared=False, name=f"{name}.big")
    def big(**kw: Any) -> dict[str, Any]:
        journal.record("big")
        return {"blob": "x" * kw["size"]}

    big_output = Saga(f"{name}.big_output").add_step(t["s1"]).add_step(big).add_step(t["s3"])

    def crash_undo_task(n: int) -> Any:
        @app.task(
            shared=False, name=f"{name}.crash_undo{n}", acks_late=True, reject_on_worker_lost=True
        )
        def crash_undo(data: Any) -> None:
            header = current_step()
            saga_id = header.saga_id if header else "-"
            journal.incr(f"undo-runs:{saga_id}")
            journal.effect("undone", f"{saga_id}:{n}")

        return crash_undo

    def crash_step_task(n: int, undo: Any) -> Any:
        @saga_step(compensate=undo)
        @app.task(shared=False, name=f"{name}.crash{n}", acks_late=True, reject_on_worker_lost=True)
        def crash_step(**kw: Any) -> dict[str, Any]:
            header = current_step()
            saga_id = header.saga_id if header else "-"
            time.sleep(0.05)  # the work of the step
            if kw.get("fail_at") == n:
                raise RuntimeError(f"step {n} failed as planned")
            journal.effect("effects", f"{saga_id}:{n}")
            return {f"c{n}": n}

        return crash_step

    crash = Saga(f"{name}.crash")
    for n in range(5):
        crash.add_step(crash_step_task(n, crash_undo_task(n)))

    t.update(
        batch=batch,
        echo=echo,
        validate=validate,
        charge=charge,
        reserve=reserve,
        confirm=confirm,
        refund=refund,
        release=release,
        noop=noop,
        member=member,
        bad_output=bad_output,
        svc_b_reserve=svc_b_reserve,
        svc_b_release=svc_b_release,
    )
    return Scenarios(
        app=app,
        journal=journal,
        five=five,
        parallel=parallel,
        permanent=permanent,
        transforms=transforms,
        functional=functional,
        order=order,
        by_name=by_name,
        bad_output=bad,
        wide=wide,
        flaky_compensation=flaky_compensation,
        broken_compensation=broken_compensation,
        deadline=deadline,
        gated=gated,
        retrying=retrying,
        big_output=big_output,
        crash=crash,
        timeout_hard=timeout_hard,
        timeout_soft=timeout_soft,
        tasks=t,
        composition=build_composition(app, journal, f"{name}.compose"),
    )


def routing_saga(app: Celery) -> Saga:
    """Steps on the saga's own queue around a step of another service, named by string."""

    @app.task(shared=False, name="e2e.route.local_a")
    def local_a(**kw: Any) -> dict[str, Any]:
        return {"a": "done"}

    @app.task(shared=False, name="e2e.route.undo_a")
    def undo_a(data: Any) -> None:
        return None

    @app.task(shared=False, name="e2e.route.local_c")
    def local_c(**kw: Any) -> dict[str, Any]:
        if kw.get("fail") == "c":
            raise RuntimeError("c failed")
        return {"c": kw["svc_b"]}

    return (
        Saga("e2e.routing", app=app)
        .add_step(local_a, compensate=undo_a)
        .add_step("svc_b.reserve", compensate="svc_b.release")
        .add_step(local_c)
    )
