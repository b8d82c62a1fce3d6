"""W1-W5 and W7: which contenders run, how they alternate, the numbers each workload keeps.

Every workload runs its contenders in the same invocation, alternating: in each
repetition every contender runs once, and the order rotates by one place from one
repetition to the next, so no contender always runs first (or right after another).
A workload's section of ``results.json`` keeps every repetition's raw numbers, their
median and spread (min-max), and ratios between contenders: the ratio of the
medians, with the range of the per-repetition ratios beside it. Ratios without an
entry in `TARGETS` (W7's nested / flat, the cost of a child saga) are reported only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from contenders import Contender, Run

T = TypeVar("T")

#: The targets of the issue: (workload, numerator, denominator, measure) -> (op, limit).
TARGETS: dict[tuple[str, str, str, str], tuple[str, float]] = {
    ("W1", "saga", "chain", "seconds"): ("<=", 1.2),
    ("W1", "orig", "saga", "seconds"): (">=", 1.4),
    ("W3", "saga", "chain", "p50"): ("<=", 1.5),
}


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
    contenders: Sequence[Contender],
    reps: int,
    measure: Callable[[Contender, int], T],
    show: Callable[[T], str],
) -> tuple[dict[str, list[T]], list[list[str]]]:
    """Run every contender once per repetition, rotating the order; results by key."""
    results: dict[str, list[T]] = {c.key: [] for c in contenders}
    orders = []
    for rep in range(reps):
        shift = rep % len(contenders)
        order = [*contenders[shift:], *contenders[:shift]]
        orders.append([c.key for c in order])
        for contender in order:
            value = measure(contender, rep)
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


def throughput(
    workload: str,
    description: str,
    contenders: Sequence[Contender],
    saga: str,
    n: int,
    reps: int,
    ratios: Sequence[tuple[str, str]],
    ran_key: Callable[[str, int], str] | None = None,
) -> dict[str, Any]:
    """A throughput workload: `n` sagas started at once, seconds until all finished."""

    def measure(contender: Contender, rep: int) -> Run:
        worker_before, caller_before = contender.cpu()
        run = contender.throughput(saga, n, ran_key(contender.key, rep) if ran_key else None)
        worker_after, caller_after = contender.cpu()
        run.worker_cpu, run.caller_cpu = worker_after - worker_before, caller_after - caller_before
        return run

    runs, orders = alternate(workload, contenders, reps, measure, _show_run)
    seconds = {key: [r.seconds for r in rs] for key, rs in runs.items()}
    section: dict[str, Any] = {
        "description": description,
        "sagas": n,
        "reps": reps,
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
) -> dict[str, Any]:
    """W3: one saga at a time, `n` in a row; p50 and p99 of each repetition."""
    runs, orders = alternate(
        workload,
        contenders,
        reps,
        lambda c, rep: c.latency(n),
        lambda lat: (
            f"p50 {percentile(lat, 50) * 1000:7.2f} ms  p99 {percentile(lat, 99) * 1000:7.2f} ms"
        ),
    )
    p50 = {key: [percentile(lat, 50) for lat in reps_] for key, reps_ in runs.items()}
    p99 = {key: [percentile(lat, 99) for lat in reps_] for key, reps_ in runs.items()}
    return {
        "description": description,
        "sagas": n,
        "reps": reps,
        "orders": orders,
        "contenders": {
            c.key: {
                "label": c.label,
                "p50": summary(p50[c.key]),
                "p99": summary(p99[c.key]),
                "latencies": [[round(x, 6) for x in lat] for lat in runs[c.key]],
            }
            for c in contenders
        },
        "ratios": [
            ratio(workload, a, b, values, measure)
            for measure, values in (("p50", p50), ("p99", p99))
            for a, b in ratios
            if a in runs and b in runs
        ],
    }
