"""W1-W10: which contenders run, how they alternate, the numbers each workload keeps.

Every workload runs its contenders in the same invocation, alternating: in each
repetition every contender runs once, and the order rotates by one place from one
repetition to the next, so no contender always runs first (or right after another).
A workload's section of ``results.json`` keeps every repetition's raw numbers, their
median and spread (min-max), and ratios between contenders: the ratio of the
medians, with the range of the per-repetition ratios beside it. Ratios without an
entry in `TARGETS` (W7's nested / flat, the cost of a child saga) are reported only.

W4 (`by_length`) alternates every (store, saga length) pair in each repetition, so
the per-step CPU of a 200-step saga is compared with that of a 5-step saga measured
under the same load. W8 (`footprint`) alternates the stores the same way, each
repetition measuring what N finished sagas left. W9 (`web_pages`) alternates the web
view's pages (of every store) the same way, each repetition timing N requests of each.
W10 is a `throughput` workload: W1's sagas with the tracing on and off, and the chain.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from contenders import Contender, Run
from footprint import Sizer

T = TypeVar("T")


class Keyed(Protocol):
    """What `alternate` needs of what it alternates: a key and a label."""

    @property
    def key(self) -> str:
        """The key of its results."""
        ...

    @property
    def label(self) -> str:
        """Its name in the output."""
        ...


K = TypeVar("K", bound=Keyed)

#: The targets of the issues: (workload, numerator, denominator, measure) -> (op, limit).
TARGETS: dict[tuple[str, str, str, str], tuple[str, float]] = {
    ("W1", "saga", "chain", "seconds"): ("<=", 1.1),
    ("W1", "orig", "saga", "seconds"): (">=", 1.4),
    ("W3", "saga", "chain", "p50"): ("<=", 1.0),
    # W4 at 5 steps: each store against the Redis store.
    ("W4", "postgresql@5", "redis@5", "seconds"): ("<=", 1.3),
    ("W4", "mysql@5", "redis@5", "seconds"): ("<=", 1.6),
    ("W4", "sqlite@5", "redis@5", "seconds"): ("<=", 1.6),
    # W4: workers' CPU per step of a 200-step saga over that of a 5-step saga.
    ("W4", "redis@200", "redis@5", "cpu_per_step"): ("<=", 1.15),
    ("W4", "postgresql@200", "postgresql@5", "cpu_per_step"): ("<=", 1.15),
    ("W4", "mysql@200", "mysql@5", "cpu_per_step"): ("<=", 1.15),
    ("W4", "sqlite@200", "sqlite@5", "cpu_per_step"): ("<=", 1.15),
    # W6: our saga on the PostgreSQL store against DBOS on the same server.
    ("W6", "postgresql", "dbos", "seconds"): ("<=", 1.0),
    ("W6", "postgresql", "dbos", "p50"): ("<=", 1.5),
}

#: Absolute targets: (workload, contender, figure) -> (op, limit); contender ``*``: every
#: contender of the workload (`limit_for`).
LIMITS: dict[tuple[str, str, str], tuple[str, float]] = {
    ("W8", "redis", "memory"): ("<=", 2500),
    # W9: every page of the web view, on every store: median request time.
    ("W9", "*", "median_ms"): ("<", 200),
}


def limit_for(workload: str, key: str, figure: str) -> tuple[str, float] | None:
    """The absolute target of a contender's figure: its own, else its workload's ``*``."""
    return LIMITS.get((workload, key, figure)) or LIMITS.get((workload, "*", figure))


def meets(value: float, op: str, limit: float) -> bool:
    """Whether `value` meets the target ``<op> <limit>``."""
    return {
        "<": value < limit,
        "<=": value <= limit,
        ">=": value >= limit,
        ">": value > limit,
        "==": value == limit,
    }[op]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of the repetitions, and the repetitions themselves."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 6) for v in values],
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def alternate(
    workload: str,
    contenders: Sequence[K],
    reps: int,
    measure: Callable[[K, int], T],
    show: Callable[[T], str],
    *,
    rounds: int = 1,
    combine: Callable[[list[T]], T] | None = None,
) -> tuple[dict[str, list[T]], list[list[str]]]:
    """Run every contender once per repetition, rotating the order; results by key.

    With `rounds` above 1, a repetition runs the contenders `rounds` times in its order
    (each `measure` call a part of the repetition) and `combine` makes one result of a
    contender's parts: the contenders take turns every part instead of every
    repetition, so a change in the machine's load meets them alike.
    """
    if rounds > 1 and combine is None:
        raise ValueError("alternate: rounds above 1 need a combine function")
    results: dict[str, list[T]] = {c.key: [] for c in contenders}
    orders = []
    for rep in range(reps):
        shift = rep % len(contenders)
        order = [*contenders[shift:], *contenders[:shift]]
        orders.append([c.key for c in order])
        parts: dict[str, list[T]] = {c.key: [] for c in order}
        for _ in range(rounds):
            for contender in order:
                parts[contender.key].append(measure(contender, rep))
        for contender in order:
            value = parts[contender.key][0] if combine is None else combine(parts[contender.key])
            results[contender.key].append(value)
            print(
                f"  {workload} rep {rep + 1}/{reps}  {contender.label:<44} {show(value)}",
                flush=True,
            )
    return results, orders


def ratio(
    workload: str,
    num: str,
    den: str,
    values: dict[str, list[float]],
    measure: str = "seconds",
) -> dict[str, Any]:
    """`num` over `den`: ratio of the medians, per-repetition range, target if any."""
    per_rep = [a / b for a, b in zip(values[num], values[den])]
    entry: dict[str, Any] = {
        "measure": measure,
        "num": num,
        "den": den,
        "median": statistics.median(values[num]) / statistics.median(values[den]),
        "min": min(per_rep),
        "max": max(per_rep),
        "runs": [round(r, 4) for r in per_rep],
        "target": None,
        "ok": None,
    }
    target = TARGETS.get((workload, num, den, measure))
    if target is not None:
        op, limit = target
        entry["target"] = {"op": op, "value": limit}
        entry["ok"] = entry["median"] <= limit if op == "<=" else entry["median"] >= limit
    return entry


def _show_run(run: Run) -> str:
    text = f"{run.seconds:8.3f} s  CPU: workers {run.worker_cpu:6.2f} s"
    text += f", caller {run.caller_cpu:5.2f} s"
    if run.lost is not None:
        text += f"  lost outputs: {run.lost}"
    if run.not_completed:
        text += f"  NOT COMPLETED: {run.not_completed} {run.statuses}"
    return text


def combined(parts: list[Run]) -> Run:
    """One repetition's run from its blocks: times, CPU and counts summed."""
    statuses: dict[str, int] = {}
    for part in parts:
        for status, count in part.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    losts = [part.lost for part in parts if part.lost is not None]
    return Run(
        seconds=sum(part.seconds for part in parts),
        not_completed=sum(part.not_completed for part in parts),
        lost=sum(losts) if losts else None,
        statuses=statuses,
        worker_cpu=sum(part.worker_cpu for part in parts),
        caller_cpu=sum(part.caller_cpu for part in parts),
        ids=[i for part in parts for i in part.ids],
    )


def throughput(
    workload: str,
    description: str,
    contenders: Sequence[Contender],
    saga: str,
    n: int,
    reps: int,
    ratios: Sequence[tuple[str, str]],
    ran_key: Callable[[str, int], str] | None = None,
    blocks: int = 1,
) -> dict[str, Any]:
    """A throughput workload: `n` sagas started at once, seconds until all finished.

    With `blocks` above 1, each repetition starts a contender's `n` sagas in that many
    blocks (of `n` // `blocks`), the contenders taking turns block by block
    (`alternate`'s rounds); a repetition's figures are the sums over its blocks.
    """
    if blocks < 1 or n % blocks:
        raise ValueError(f"{workload}: {n} sagas do not split into {blocks} equal blocks")
    size = n // blocks

    def measure(contender: Contender, rep: int) -> Run:
        worker_before, caller_before = contender.cpu()
        run = contender.throughput(saga, size, ran_key(contender.key, rep) if ran_key else None)
        worker_after, caller_after = contender.cpu()
        run.worker_cpu, run.caller_cpu = worker_after - worker_before, caller_after - caller_before
        return run

    runs, orders = alternate(
        workload, contenders, reps, measure, _show_run, rounds=blocks, combine=combined
    )
    seconds = {key: [r.seconds for r in rs] for key, rs in runs.items()}
    section: dict[str, Any] = {
        "description": description,
        "sagas": n,
        "reps": reps,
        "blocks": blocks,
        "orders": orders,
        "contenders": {
            c.key: {
                "label": c.label,
                "seconds": summary(seconds[c.key]),
                "not_completed": [r.not_completed for r in runs[c.key]],
                # CPU per saga (ms): counted, so steadier than times on a shared machine.
                "worker_cpu_ms_per_saga": summary([r.worker_cpu * 1000 / n for r in runs[c.key]]),
                "caller_cpu_ms_per_saga": summary([r.caller_cpu * 1000 / n for r in runs[c.key]]),
                **({"lost": [r.lost for r in runs[c.key]]} if ran_key is not None else {}),
            }
            for c in contenders
        },
        "ratios": [ratio(workload, a, b, seconds) for a, b in ratios if a in runs and b in runs],
    }
    if ran_key is not None:
        # W2: zero lost outputs for this project; the others' counts are reported beside it.
        section["checks"] = [
            {
                "name": "lost outputs",
                "contender": c.key,
                "value": sum(r.lost or 0 for r in runs[c.key]),
                "runs": [r.lost for r in runs[c.key]],
                "target": {"op": "==", "value": 0} if c.key == "saga" else None,
                "ok": (sum(r.lost or 0 for r in runs[c.key]) == 0) if c.key == "saga" else None,
            }
            for c in contenders
        ]
    return section


def latency(
    workload: str,
    description: str,
    contenders: Sequence[Contender],
    n: int,
    reps: int,
    ratios: Sequence[tuple[str, str]],
    percentiles: Sequence[int] = (50, 99),
) -> dict[str, Any]:
    """One saga at a time, `n` in a row; the `percentiles` of each repetition (W3, W6)."""
    runs, orders = alternate(
        workload,
        contenders,
        reps,
        lambda c, rep: c.latency(n),
        lambda lat: "  ".join(f"p{q} {percentile(lat, q) * 1000:7.2f} ms" for q in percentiles),
    )
    values = {
        f"p{q}": {key: [percentile(lat, q) for lat in reps_] for key, reps_ in runs.items()}
        for q in percentiles
    }
    return {
        "description": description,
        "sagas": n,
        "reps": reps,
        "orders": orders,
        "percentiles": [f"p{q}" for q in percentiles],
        "contenders": {
            c.key: {
                "label": c.label,
                **{measure: summary(by_key[c.key]) for measure, by_key in values.items()},
                "latencies": [[round(x, 6) for x in lat] for lat in runs[c.key]],
                # Waits that never returned although the result was there (PlainChain).
                "stuck_gets": getattr(c, "stuck_gets", 0),
            }
            for c in contenders
        },
        "ratios": [
            ratio(workload, a, b, by_key, measure)
            for measure, by_key in values.items()
            for a, b in ratios
            if a in runs and b in runs
        ],
    }


@dataclass
class _AtLength:
    """One contender running sagas of one length: a contender of its own in `alternate`."""

    key: str
    label: str
    contender: Contender
    length: int
    n: int


def by_length(
    workload: str,
    description: str,
    stores: Sequence[Contender],
    chain: Contender | None,
    lengths: Sequence[int],
    sagas: dict[int, int],
    reps: int,
) -> dict[str, Any]:
    """W4: sagas of each length on each store; time per saga and workers' CPU per step.

    Every (store, length) pair, and the plain chain at 5 steps, runs once per
    repetition, the order rotating. `sagas[L]` sagas of L steps are started at once
    (``five`` for 5, ``steps<L>`` otherwise). Ratios: each store against the chain
    and against the Redis store at 5 steps, and per store the workers' CPU per step
    at each longer length over that at 5 steps (the flatness target).
    """
    pairs: list[_AtLength] = []
    for length in lengths:
        at = [] if chain is None or length != 5 else [chain]
        for c in [*at, *stores]:
            label = f"{c.label}, {length} steps"
            pairs.append(_AtLength(f"{c.key}@{length}", label, c, length, sagas[length]))

    def measure(pair: _AtLength, rep: int) -> Run:
        contender, length = pair.contender, pair.length
        worker_before, caller_before = contender.cpu()
        run = contender.throughput("five" if length == 5 else f"steps{length}", pair.n)
        worker_after, caller_after = contender.cpu()
        run.worker_cpu, run.caller_cpu = worker_after - worker_before, caller_after - caller_before
        return run

    runs, orders = alternate(workload, pairs, reps, measure, _show_run)
    seconds = {key: [r.seconds for r in rs] for key, rs in runs.items()}
    per_step = {p.key: [r.worker_cpu * 1000 / (p.n * p.length) for r in runs[p.key]] for p in pairs}
    per_saga = {p.key: [s / p.n for s in seconds[p.key]] for p in pairs}
    keys = {p.key for p in pairs}
    ratios = [
        ratio(workload, a, b, seconds)
        for c in stores
        for a, b in ((f"{c.key}@5", "chain@5"), (f"{c.key}@5", "redis@5"))
        if a in keys and b in keys and a != b
    ]
    flat = [
        ratio(workload, f"{c.key}@{length}", f"{c.key}@5", per_step, "cpu_per_step")
        for c in stores
        for length in lengths
        if length != 5 and f"{c.key}@5" in keys
    ]
    return {
        "description": description,
        "lengths": list(lengths),
        "sagas": {str(length): sagas[length] for length in lengths},
        "reps": reps,
        "orders": orders,
        "contenders": {
            p.key: {
                "label": p.contender.label,
                "store": p.contender.key,
                "steps": p.length,
                "sagas": p.n,
                "seconds": summary(seconds[p.key]),
                "seconds_per_saga": summary(per_saga[p.key]),
                "worker_cpu_ms_per_step": summary(per_step[p.key]),
                "caller_cpu_ms_per_saga": summary([r.caller_cpu * 1000 / p.n for r in runs[p.key]]),
                "not_completed": [r.not_completed for r in runs[p.key]],
            }
            for p in pairs
        },
        "ratios": ratios,
        "flatness": flat,
    }


def footprint(
    workload: str,
    description: str,
    contenders: Sequence[Contender],
    sizers: dict[str, Sizer],
    n: int,
    reps: int,
    ratios: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """W8: bytes each contender keeps per finished saga (every figure of its sizer).

    Per repetition and contender: the sizer's baseline, `n` five-step sagas kept
    (``keep=True``), the sizer's measure, then the sagas are deleted.
    """

    def measure(contender: Contender, rep: int) -> dict[str, float]:
        sizer = sizers[contender.key]
        before = sizer.baseline()
        run = contender.throughput("five", n, keep=True)
        try:
            if run.not_completed:
                raise SystemExit(f"W8: {run.not_completed} sagas of {contender.label} failed")
            after = sizer.measure(run.ids)
        finally:
            contender.forget(run.ids)
        return {name: (after[name] - before.get(name, 0)) / n for name in after}

    def show(figures: dict[str, float]) -> str:
        return "  ".join(f"{name} {value:9.0f} B/saga" for name, value in figures.items())

    runs, orders = alternate(workload, contenders, reps, measure, show)
    primary = {key: next(iter(rs[0])) for key, rs in runs.items()}
    values = {key: [figures[primary[key]] for figures in rs] for key, rs in runs.items()}
    section: dict[str, Any] = {
        "description": description,
        "sagas": n,
        "reps": reps,
        "orders": orders,
        "contenders": {
            c.key: {
                "label": c.label,
                "primary": primary[c.key],
                "bytes_per_saga": {
                    name: summary([figures[name] for figures in runs[c.key]])
                    for name in runs[c.key][0]
                },
            }
            for c in contenders
        },
        "ratios": [
            ratio(workload, a, b, values, "bytes") for a, b in ratios if a in runs and b in runs
        ],
        "checks": [],
    }
    for (name, key, figure), (op, limit) in LIMITS.items():
        if name == workload and key in runs and primary[key] == figure:
            median = statistics.median(values[key])
            ok = median <= limit if op == "<=" else median >= limit
            section["checks"].append(
                {
                    "name": f"bytes per saga ({figure})",
                    "contender": key,
                    "value": median,
                    "target": {"op": op, "value": limit},
                    "ok": ok,
                }
            )
    return section


class WebPage(Keyed, Protocol):
    """What `web_pages` needs of a page: its key and label, store, name and path."""

    @property
    def store(self) -> str:
        """The store the view reads."""
        ...

    @property
    def name(self) -> str:
        """Which page it is (``list``, ``status``, ``name``, ``page2``, ``execution``)."""
        ...

    @property
    def path(self) -> str:
        """Its path and query string."""
        ...


P = TypeVar("P", bound=WebPage)


def web_pages(
    workload: str,
    description: str,
    pages: Sequence[P],
    reps: int,
    n: int,
    measure: Callable[[P], tuple[list[float], float]],
) -> dict[str, Any]:
    """W9: `n` requests of each page per repetition, the pages alternating.

    `measure` sends a page's `n` requests and returns their seconds and the server's
    CPU seconds meanwhile. Per page: the median request time (median of the
    repetitions' medians, spread: their min-max), p95 (of each repetition, and of
    every request together), the server's CPU per request, each against `LIMITS`.
    """

    def show(result: tuple[list[float], float]) -> str:
        times, cpu = result
        return (
            f"median {statistics.median(times) * 1000:7.2f} ms  p95 "
            f"{percentile(times, 95) * 1000:7.2f} ms  server CPU "
            f"{cpu * 1000 / len(times):6.2f} ms/request"
        )

    runs, orders = alternate(workload, pages, reps, lambda page, rep: measure(page), show)
    section: dict[str, Any] = {
        "description": description,
        "requests": n,
        "reps": reps,
        "orders": orders,
        "pages": {},
        "checks": [],
    }
    for page in pages:
        times = [[t * 1000 for t in result[0]] for result in runs[page.key]]
        medians = [statistics.median(ms) for ms in times]
        everything = [t for ms in times for t in ms]
        section["pages"][page.key] = {
            "label": page.label,
            "store": page.store,
            "page": page.name,
            "path": page.path,
            "median_ms": summary(medians),
            "p95_ms": summary([percentile(ms, 95) for ms in times]),
            "p95_all_ms": percentile(everything, 95),
            "server_cpu_ms_per_request": summary([cpu * 1000 / n for _, cpu in runs[page.key]]),
            "requests_ms": [[round(t, 3) for t in ms] for ms in times],
        }
        target = limit_for(workload, page.key, "median_ms")
        if target is not None:
            op, limit = target
            value = statistics.median(medians)
            section["checks"].append(
                {
                    "name": "median request time (ms)",
                    "contender": page.key,
                    "value": value,
                    "target": {"op": op, "value": limit},
                    "ok": meets(value, op, limit),
                }
            )
    return section
