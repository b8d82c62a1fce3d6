"""The benchmark table, from ``benchmarks/results.json``: for the terminal and for the docs.

``python benchmarks/report.py`` writes ``docs/performance.md`` (the latest table, the
machine it ran on, how to reproduce it); ``--print`` also prints the table.
``run.py`` prints the same table through `render_text`, so both always agree.

Other tools may add sections to results.json. A ``"stores"`` section (written by
``benchmarks/stores.py``) is shown under its own heading: its ``"markdown"`` text
verbatim if it has one; else, if it has per-backend ``"backends"`` results (``steps``
for 5- and 50-step sagas, ``listing`` at two sizes), tables of those; else its
``"rows"`` (a list of flat dicts), or any list or dict of flat dicts it holds, as a
table; else a pointer to the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DOC = HERE.parent / "docs" / "performance.md"

HEADER = (
    "Workload",
    "What",
    "Measure",
    "Median",
    "Spread (min-max)",
    "Workers' CPU / saga",
    "Target",
    "Result",
)

#: Short names of contenders in ratio rows.
SHORT = {
    "chain": "plain chain",
    "saga": "celery-saga",
    "orig": "celery-saga 0.1.1",
    "redis": "redis store",
    "postgresql": "postgresql store",
    "mysql": "mysql store",
    "sqlite": "sqlite store",
    "mongodb": "mongodb store",
    "chain-amqp": "plain chain",
    "saga-amqp": "celery-saga",
    "nested": "nested saga",
    "flat": "flat saga",
}

#: The workloads of the table, in order.
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W7")

TITLES = {
    "W1": "W1: sagas of 5 no-op steps",
    "W2": "W2: one step, then a parallel group of 4",
    "W3": "W3: one saga at a time, caller blocking on get()",
    "W4": "W4: W1 on each state store",
    "W5": "W5: W1 with the RabbitMQ broker",
    "W7": "W7: a child saga as the middle of 3 steps, against a flat saga of 5",
}


def _seconds(value: float, unit: bool = True) -> str:
    return f"{value:.3f} s" if unit else f"{value:.3f}"


def _ms(value: float, unit: bool = True) -> str:
    return f"{value * 1000:.1f} ms" if unit else f"{value * 1000:.1f}"


def _spread(summary: dict[str, Any], fmt: Any) -> str:
    """``min-max`` with the unit once, at the end."""
    return f"{fmt(summary['min'], False)}-{fmt(summary['max'])}"


def _target(entry: dict[str, Any]) -> tuple[str, str]:
    target = entry.get("target")
    if not target:
        return "", ""
    op = {"<=": "≤", ">=": "≥", "==": "="}.get(target["op"], target["op"])
    return f"{op} {target['value']:g}", "PASS" if entry.get("ok") else "FAIL"


def _ratio_rows(workload: str, section: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for entry in section.get("ratios", []):
        target, result = _target(entry)
        name = f"{SHORT.get(entry['num'], entry['num'])} / {SHORT.get(entry['den'], entry['den'])}"
        measure = "ratio" if entry["measure"] == "seconds" else f"ratio of {entry['measure']}"
        rows.append(
            (
                workload,
                name,
                measure,
                f"{entry['median']:.2f}",
                f"{entry['min']:.2f}-{entry['max']:.2f}",
                "",
                target,
                result,
            )
        )
    return rows


def rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table: one row per measurement, ratio and check, W1 to W7, then the counts."""
    table: list[tuple[str, ...]] = []
    for workload in WORKLOADS:
        section = results.get(workload)
        if not section:
            continue
        if workload == "W3":
            for c in section["contenders"].values():
                for measure in ("p50", "p99"):
                    median, spread = _ms(c[measure]["median"]), _spread(c[measure], _ms)
                    table.append((workload, c["label"], measure, median, spread, "", "", ""))
        else:
            for c in section["contenders"].values():
                note = ""
                if any(c.get("not_completed", [])):
                    note = f"! {sum(c['not_completed'])} not completed"
                cpu = c.get("worker_cpu_ms_per_saga")
                table.append(
                    (
                        workload,
                        c["label"],
                        "time",
                        _seconds(c["seconds"]["median"]),
                        _spread(c["seconds"], _seconds),
                        f"{cpu['median']:.1f} ms" if cpu else "",
                        "",
                        note,
                    )
                )
        table += _ratio_rows(workload, section)
        for check in section.get("checks", []):
            label = section["contenders"][check["contender"]]["label"]
            target, result = _target(check)
            runs = "/".join(str(r) for r in check["runs"])
            total = section["sagas"] * len(check["runs"])
            table.append(
                (
                    workload,
                    label,
                    check["name"],
                    f"{check['value']} of {total}",
                    f"per rep {runs}",
                    "",
                    target or "reported",
                    result,
                )
            )
    counts = results.get("counts")
    if counts:
        what = f"celery-saga (Redis store), {counts['sagas']} sagas"
        for measure, key, fmt in (
            ("broker messages / step", "broker_messages_per_step", "{:.2f}"),
            ("store round trips / step", "store_round_trips_per_step", "{:.2f}"),
            ("  in workers / step", "store_round_trips_per_step_in_workers", "{:.2f}"),
            ("  in caller / saga", "store_round_trips_per_saga_in_caller", "{:.2f}"),
            ("store bytes written / step", "store_bytes_written_per_step", "{:.0f}"),
        ):
            value = fmt.format(counts[key])
            table.append(("counts", what, measure, value, "(counted)", "", "", ""))
    return table


def _widths(table: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(row[i]) for row in table) for i in range(len(table[0]))]


def render_text(results: dict[str, Any]) -> str:
    """The table for a terminal, with a line under the header and between workloads."""
    body = rows(results)
    if not body:
        return "(no results)"
    widths = _widths([HEADER, *body])
    line = "  ".join("-" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()

    out = [_summary_line(results), fmt(HEADER), line]
    previous = body[0][0]
    for row in body:
        if row[0] != previous:
            out.append("")
            previous = row[0]
        out.append(fmt(row))
    return "\n".join(out)


def _summary_line(results: dict[str, Any]) -> str:
    config = results.get("config", {})
    sizes = config.get("sizes", {})
    quick = " (--quick)" if config.get("quick") else ""
    return (
        f"celery-saga benchmark{quick}: {config.get('reps', '?')} repetitions, contenders "
        "alternating; median and min-max over repetitions; sagas: "
        + ", ".join(f"{k.upper()} {v}" for k, v in sizes.items())
    )


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _flat(value: Any) -> bool:
    return isinstance(value, dict) and all(not isinstance(v, dict | list) for v in value.values())


def _stores_tables(section: dict[str, Any]) -> str:
    """stores.py's per-backend results: cost per step, and listing at two sizes."""
    backends: dict[str, Any] = section["backends"]
    cost = []
    listing = []
    for name, b in backends.items():
        steps = b.get("steps")
        if steps:
            short, long_ = steps["5"], steps["50"]
            cost.append(
                [
                    name,
                    f"{short['per_step']['round_trips']:.2f}",
                    f"{long_['per_step']['round_trips']:.2f}",
                    f"{steps['marginal_per_step']['round_trips']:.2f}",
                    f"{short['per_step']['bytes_written']:.0f}",
                    f"{long_['per_step']['bytes_written']:.0f}",
                    f"{steps['marginal_per_step']['bytes_written']:.0f}",
                    "yes" if steps.get("step_ops_equal") else "no",
                ]
            )
        lst = b.get("listing")
        if lst:
            listing.append(
                [
                    name,
                    f"{lst['small_ms']:.2f} ms",
                    f"{lst['large_ms']:.2f} ms",
                    f"{lst['ratio']:.2f}",
                    "PASS" if lst["ratio"] <= 2 else "FAIL",
                ]
            )
    description = str(section.get("description", "")).rstrip(".")
    parts = [description[:1].upper() + description[1:] + "."]
    if cost:
        parts.append(
            _markdown_table(
                [
                    "Store",
                    "Round trips / step (5-step saga)",
                    "(50-step saga)",
                    "Marginal round trips / step",
                    "Bytes written / step (5)",
                    "(50)",
                    "Marginal bytes / step",
                    "Step operations the same at both lengths",
                ],
                cost,
            )
        )
    if listing:
        first = next(iter(b["listing"] for b in backends.values() if b.get("listing")))
        small, large = f"{first['small']:,}", f"{first['large']:,}"
        parts.append(
            f'One page of `list(status="failed", limit=50)`, median of {first["calls"]} '
            f"calls, with {small} and with {large} executions in the store (target: at most "
            "2x):"
        )
        parts.append(
            _markdown_table(["Store", f"At {small}", f"At {large}", "Ratio", "Target ≤ 2"], listing)
        )
    return "\n\n".join(parts)


def _stores_markdown(section: Any) -> str:
    """The ``stores`` section of results.json (written by stores.py), as Markdown."""
    if isinstance(section, dict) and isinstance(section.get("markdown"), str):
        return str(section["markdown"]).strip()
    if isinstance(section, dict) and isinstance(section.get("backends"), dict):
        try:
            return _stores_tables(section)
        except (KeyError, TypeError, ValueError, StopIteration):
            pass  # a shape this report does not know: fall through to the generic forms
    candidates: list[Any] = []
    if isinstance(section, dict):
        candidates = [section.get("rows"), *section.values()]
        if all(_flat(v) for v in section.values()) and section:
            candidates.insert(0, [{"name": k, **v} for k, v in section.items()])
    elif isinstance(section, list):
        candidates = [section]
    for candidate in candidates:
        if isinstance(candidate, list) and candidate and all(_flat(r) for r in candidate):
            header: list[str] = []
            for row in candidate:
                header += [k for k in row if k not in header]
            body = [[_fmt_cell(row.get(k, "")) for k in header] for row in candidate]
            return _markdown_table(header, body)
    return (
        "The `stores` section of `benchmarks/results.json` has a shape this report does not "
        "know; read it there."
    )


def _fmt_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _machine_markdown(machine: dict[str, Any]) -> str:
    services = dict(machine.get("services", {}))
    if "mongodb" not in services and "SecantusDB" in machine.get("packages", {}):
        services["mongodb"] = f"SecantusDB {machine['packages']['SecantusDB']}"
    packages = machine.get("packages", {})
    git = machine.get("git", {})
    commit = git.get("commit", "?") if isinstance(git, dict) else git
    dirty = " (with uncommitted changes)" if isinstance(git, dict) and git.get("dirty") else ""
    lines = [
        f"- Date: {machine.get('date', '?')}; code: commit `{commit}`{dirty}",
        f"- CPU: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} cores; memory "
        f"{machine.get('memory', '?')}; {machine.get('platform', '?')}",
        f"- Python {machine.get('python', '?')}, Celery {machine.get('celery', '?')}, "
        f"kombu {machine.get('kombu', '?')}, redis-py {machine.get('redis_py', '?')}",
        "- Services: " + ", ".join(f"{name} {version}" for name, version in services.items()),
        "- This project: "
        + ", ".join(
            f"{name} {version}"
            for name, version in packages.items()
            if name.startswith("celery-saga")
        )
        + "; drivers: "
        + ", ".join(
            f"{name} {version}"
            for name, version in packages.items()
            if not name.startswith("celery-saga") and name != "SecantusDB"
        ),
    ]
    load = machine.get("load_average")
    if isinstance(load, dict):
        lines.append(
            "- Load average (1, 5, 15 min) at the start: "
            + ", ".join(f"{x:.2f}" for x in load["start"])
            + "; at the end: "
            + ", ".join(f"{x:.2f}" for x in load["end"])
        )
    orig = machine.get("orig_venv")
    if isinstance(orig, dict):
        lines.append(
            f"- celery-saga 0.1.1's venv: celery-saga {orig.get('celery-saga')}, Celery "
            f"{orig.get('celery')}, kombu {orig.get('kombu')}, redis-py {orig.get('redis')}, "
            f"Python {orig.get('python')}"
        )
    return "\n".join(lines)


def _mongo_note(machine: dict[str, Any]) -> list[str]:
    """A caveat for W4's mongodb row when it ran against SecantusDB."""
    server = str(machine.get("services", {}).get("mongodb", "SecantusDB"))
    if "SecantusDB" not in server:
        return []
    return [
        "- W4's mongodb row ran against SecantusDB, the pure-Python server speaking the "
        "MongoDB wire protocol that the harness starts when `BENCH_MONGO_URL` names no "
        "MongoDB server. Its `findAndModify` slows down as the collection grows (the "
        "store's step writes use it), so that row measures the test server more than the "
        "store; set `BENCH_MONGO_URL=mongodb://host:27017` to measure a real `mongod`."
    ]


def render_markdown(results: dict[str, Any]) -> str:
    """docs/performance.md: the latest table, the machine, how to reproduce, the method."""
    config = results.get("config", {})
    duration = results.get("duration_seconds")
    took = f" The harness (run.py) took {duration / 60:.0f} minutes." if duration else ""
    quick = (
        "\n\n**This was a smoke run (`--quick`): the sizes are small and the numbers are not "
        "comparable with a full run.**"
        if config.get("quick")
        else ""
    )
    parts = [
        "# Performance",
        "<!-- Generated by benchmarks/report.py from benchmarks/results.json: do not edit. -->",
        "The benchmark harness (`nox -s bench`) runs this project against the same Celery "
        "tasks as a plain Celery chain, and against `celery-saga==0.1.1` from PyPI, the "
        "package this project grew from. Every comparison runs in the same invocation, "
        "alternating the contenders; the table shows medians over the repetitions, their "
        "spread (min-max), and ratios of medians (spread: the per-repetition ratios) "
        "against the targets.",
        "## Latest results",
        _summary_line(results) + "." + took + quick,
        _markdown_table(HEADER, rows(results)),
        "## Workloads",
        "Redis broker and one prefork worker with 2 processes per contender (each on its own "
        "queue), unless said otherwise.",
        "\n".join(
            f"- **{TITLES[w]}**: {results[w]['description']}." for w in WORKLOADS if w in results
        ),
        "Targets: W1 celery-saga / plain chain ≤ 1.2 and celery-saga 0.1.1 / celery-saga "
        "≥ 1.4; W2 zero lost outputs for celery-saga (0.1.1's count beside it); W3 p50 at "
        "most 1.5 times the plain chain's."
        + (
            " W7 has none: its ratio nested saga / flat saga is the cost of a child saga."
            if "W7" in results
            else ""
        ),
        "## The machine",
        _machine_markdown(results.get("machine", {})),
        "## How to reproduce",
        "```bash\n"
        "nox -s bench                        # the full run: prints the table, writes "
        "benchmarks/results.json and this page\n"
        "nox -s bench -- --quick             # a smoke run with small sizes\n"
        "nox -s bench -- --workloads W1,W3 --reps 5 --w1-sagas 1000\n"
        "```",
        "The session builds this project's packages into its venv, makes a second venv "
        "(`celery-saga==0.1.1` and `celery[redis]==5.7.0`) for the original package, which "
        "has the same import name, and needs the services on their default local ports: "
        "Redis 6379, RabbitMQ 5672 (guest/guest), PostgreSQL 5432 (user postgres, database "
        "test) and MariaDB 3306 (root, database test); it starts a SecantusDB server for the "
        "mongodb store itself. `python benchmarks/run.py --help` lists every option.",
        "## How it is measured",
        "\n".join(
            [
                "- All workers start once, before any timing, and are warmed up. In each "
                "repetition every contender runs once; the order rotates by one each "
                "repetition.",
                f"- Throughput (W1, W2, W4, W5{', W7' if 'W7' in results else ''}): the time "
                "from the first `run()` (or `apply_async()`) until every saga finished. "
                "Every contender's caller learns "
                "that the same way: it reads the record of the oldest unfinished saga (the "
                "last result, for a chain) every 20 ms, and moves on as soon as it finished. "
                "The CPU time used by each contender's worker processes during its runs is "
                "recorded too (results.json), as it is steadier than time on a shared machine.",
                "- Latency (W3): `run()` then `get()` per saga. This project's `get()` waits "
                "for a notification from the store; the plain chain's `AsyncResult.get()` "
                "for one from the result backend; 0.1.1's `SagaResult.get()` polls its "
                f"record, here every {config.get('orig_get_interval', 0.005) * 1000:g} ms "
                "(its default, 0.5 s, would put each of its latencies above 500 ms).",
                "- celery-saga 0.1.1 runs as its README and code want: `RedisSagaBackend(url=...)` "
                "installed with `set_default_backend` in its worker and its caller, its app "
                "current and default (its internal tasks are `shared_task`s using "
                "`current_app`), and a Redis result backend, which its chords (parallel "
                "groups) need.",
                "- Lost outputs (W2): every step adds a marker to a Redis set when it runs; "
                "once all sagas finished, a saga counts when its record lacks the output of "
                "a step that ran (for the plain chain, the step's result in the result "
                "backend).",
                "- The counting rows come from a separate pass with counting workers "
                "(not timed): broker messages and state-store round trips per step.",
                *_mongo_note(results.get("machine", {})),
            ]
        ),
    ]
    stores = results.get("stores")
    if stores:
        parts += ["## State stores: round trips, bytes and listings", _stores_markdown(stores)]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/performance.md from results.json (and print the table with --print)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--out", default=str(DOC))
    parser.add_argument("--print", action="store_true", help="also print the table")
    args = parser.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
    except OSError as exc:
        raise SystemExit(f"no results to report ({exc}); run `nox -s bench` first") from None
    Path(args.out).write_text(render_markdown(results))
    if args.print:
        print(render_text(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
