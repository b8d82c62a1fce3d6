"""The benchmark tables, from ``benchmarks/results.json``: for the terminal and for the docs.

``python benchmarks/report.py`` writes ``docs/performance.md``: the main table (W1-W3,
W5, W7 and the counts), W4 by saga length, W6 (DBOS), W8 (bytes per saga), W9 (the web
view's pages), W10 (tracing on and off) and W11 (Redis server time per step against
celery-saga-redis 0.4.0), each under the run it comes from
(repetitions, date, load average, cores and CPU, and the command that reproduces it),
then the machine and the method; ``--print`` also prints the tables. ``run.py`` prints
the same tables through `render_text`, so both agree.
Sections written before each kept its own run record show the run's top-level one.

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
#: One row of a table: its cells, as text.
Row = tuple[str, ...]
#: run.py's options that name this machine's files, left out of a table's command.
LOCAL_OPTIONS = ("--orig-python", "--dbos-python", "--baseline-python", "--out")
DOC = HERE.parent / "docs" / "performance.md"
#: W1 and W3 run while CI runs (`CI_LOAD_COMMAND`): the figures that hold under that load.
CI_LOAD = HERE / "results-ci-load.json"
CI_LOAD_COMMAND = (
    "`CI=true bash .ci/run` in one shell and meanwhile, in another, the run's command "
    "below with `--out benchmarks/results-ci-load.json`, started once the test cells run"
)

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

#: Short names of contenders in ratio rows (a W4 key ``<store>@<steps>`` adds the steps).
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
    "dbos": "DBOS",
    "otel-on": "tracing on",
    "otel-off": "tracing off",
    "redis-now": "this version",
    "redis-0.4.0": "celery-saga-redis 0.4.0",
}

#: Every workload, in order.
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11")
#: The workloads of the main table (W4 only in its old shape: 5-step sagas only).
MAIN = ("W1", "W2", "W3", "W4", "W5", "W7")

TITLES = {
    "W1": "W1: sagas of 5 no-op steps",
    "W2": "W2: one step, then a parallel group of 4",
    "W3": "W3: one saga at a time, caller blocking on get()",
    "W4": "W4: each state store, sagas of 5, 50 and 200 steps",
    "W5": "W5: W1 with the RabbitMQ broker",
    "W6": "W6: DBOS on the same PostgreSQL, against this project's PostgreSQL and Redis stores",
    "W7": "W7: a child saga as the middle of 3 steps, against a flat saga of 5",
    "W8": "W8: bytes kept per finished 5-step saga",
    "W9": "W9: the web view's pages over stored executions",
    "W10": "W10: W1 with celery-saga's OpenTelemetry instrumentation on and off",
    "W11": "W11: Redis server time per step, this version against celery-saga-redis 0.4.0",
}

#: What a ratio's measure is called in the tables.
MEASURES = {
    "seconds": "ratio",
    "cpu_per_step": "ratio of workers' CPU / step",
    "bytes": "ratio of bytes / saga",
    "script_us_per_step": "ratio of script time / step",
    "store_us_per_step": "ratio of store commands' time / step",
    "server_cpu_us_per_step": "ratio of server CPU / step",
}


def _title(workload: str, section: dict[str, Any]) -> str:
    """The workload's title; W4 from before it had several lengths keeps its old one."""
    if workload == "W4" and not _by_length(section):
        return "W4: W1 on each state store"
    return TITLES[workload]


def _seconds(value: float, unit: bool = True) -> str:
    return f"{value:.3f} s" if unit else f"{value:.3f}"


def _ms(value: float, unit: bool = True) -> str:
    return f"{value * 1000:.1f} ms" if unit else f"{value * 1000:.1f}"


def _cpu_ms(value: float, unit: bool = True) -> str:
    return f"{value:.2f} ms" if unit else f"{value:.2f}"


def _bytes(value: float, unit: bool = True) -> str:
    return f"{value:,.0f} B" if unit else f"{value:,.0f}"


def _spread(summary: dict[str, Any], fmt: Any) -> str:
    """``min-max`` with the unit once, at the end."""
    return f"{fmt(summary['min'], False)}-{fmt(summary['max'])}"


def _target(entry: dict[str, Any]) -> tuple[str, str]:
    target = entry.get("target")
    if not target:
        return "", ""
    op = {"<=": "≤", ">=": "≥", "==": "="}.get(target["op"], target["op"])
    return f"{op} {target['value']:g}", "PASS" if entry.get("ok") else "FAIL"


def _short(key: str) -> str:
    """A contender's short name; ``redis@200`` is "redis store, 200 steps"."""
    name, _, steps = key.partition("@")
    short = SHORT.get(name, name)
    return f"{short}, {steps} steps" if steps else short


def _ratio_rows(workload: str, section: dict[str, Any], key: str = "ratios") -> list[Row]:
    rows: list[Row] = []
    for entry in section.get(key, []):
        target, result = _target(entry)
        name = f"{_short(entry['num'])} / {_short(entry['den'])}"
        measure = MEASURES.get(entry["measure"], f"ratio of {entry['measure']}")
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


def _check_rows(workload: str, section: dict[str, Any]) -> list[Row]:
    """W2's lost outputs: one row per contender."""
    rows: list[Row] = []
    for check in section.get("checks", []):
        if "runs" not in check:
            continue  # W8's limits are shown on the contender's row
        label = section["contenders"][check["contender"]]["label"]
        target, result = _target(check)
        runs = "/".join(str(r) for r in check["runs"])
        total = section["sagas"] * len(check["runs"])
        rows.append(
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
    return rows


def section_rows(workload: str, section: dict[str, Any]) -> list[Row]:
    """The rows of one throughput, latency or footprint section, then its ratios and checks."""
    table: list[Row] = []
    contenders = list(section["contenders"].items())
    first = contenders[0][1] if contenders else {}
    if "bytes_per_saga" in first:
        limits = {c["contender"]: c for c in section.get("checks", []) if "runs" not in c}
        for key, c in contenders:
            for name, figure in c["bytes_per_saga"].items():
                check = limits.get(key) if name == c["primary"] else None
                target, result = _target(check) if check else ("", "")
                measure = f"bytes / saga ({name.replace('_', ' ')})"
                median, spread = _bytes(figure["median"]), _spread(figure, _bytes)
                table.append((workload, c["label"], measure, median, spread, "", target, result))
    elif "p50" in first:
        for _, c in contenders:
            stuck = c.get("stuck_gets", 0)
            note = f"{stuck} stuck get() left out" if stuck else ""
            for measure in section.get("percentiles", ["p50", "p99"]):
                median, spread = _ms(c[measure]["median"]), _spread(c[measure], _ms)
                table.append((workload, c["label"], measure, median, spread, "", "", note))
    else:
        for _, c in contenders:
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
    return table + _ratio_rows(workload, section) + _check_rows(workload, section)


def _by_length(section: dict[str, Any]) -> bool:
    """True for W4 with several saga lengths (its own tables), false for the old W4."""
    return "lengths" in section


def rows(results: dict[str, Any]) -> list[Row]:
    """The main table: one row per measurement, ratio and check, W1 to W7, then the counts."""
    table: list[Row] = []
    for workload in MAIN:
        section = results.get(workload)
        if not section or (workload == "W4" and _by_length(section)):
            continue
        table += section_rows(workload, section)
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


LENGTH_HEADER = (
    "Store",
    "Steps",
    "Sagas",
    "Time",
    "Spread (min-max)",
    "Time / saga",
    "Workers' CPU / step",
    "Spread (min-max)",
)
RATIO_HEADER = ("Workload", "Ratio", "Measure", "Median", "Spread (min-max)", "Target", "Result")


def length_rows(section: dict[str, Any]) -> list[Row]:
    """W4 by length: one row per (store, length), grouped by store, the chain first."""
    entries = list(section["contenders"].values())
    order = {name: i for i, name in enumerate(dict.fromkeys(e["store"] for e in entries))}
    if "chain" in order:
        order["chain"] = -1
    table: list[Row] = []
    for e in sorted(entries, key=lambda e: (order[e["store"]], e["steps"])):
        cpu = e["worker_cpu_ms_per_step"]
        note = f" ! {sum(e['not_completed'])} not completed" if any(e["not_completed"]) else ""
        table.append(
            (
                e["label"],
                str(e["steps"]),
                str(e["sagas"]),
                _seconds(e["seconds"]["median"]),
                _spread(e["seconds"], _seconds),
                _ms(e["seconds_per_saga"]["median"]),
                _cpu_ms(cpu["median"]),
                _spread(cpu, _cpu_ms) + note,
            )
        )
    return table


def length_ratio_rows(section: dict[str, Any]) -> list[Row]:
    """W4's ratios: time at 5 steps against the chain and Redis, then CPU per step flatness."""
    both = _ratio_rows("W4", section) + _ratio_rows("W4", section, "flatness")
    return [row[:5] + row[6:] for row in both]


def footprint_rows(section: dict[str, Any]) -> list[Row]:
    """W8's rows, without the CPU column."""
    return [row[:5] + row[6:] for row in section_rows("W8", section)]


FOOTPRINT_HEADER = ("Workload", "What", "Figure", "Median", "Spread (min-max)", "Target", "Result")
WEB_HEADER = (
    "Store",
    "Page",
    "Path",
    "Median",
    "Spread (min-max)",
    "p95",
    "Server CPU / request",
    "Target",
    "Result",
)


def _path(path: str) -> str:
    """A page's path as shown: a cursor's value (long, different every run) elided."""
    head, found, _ = path.partition("cursor=")
    return f"{head}cursor=…" if found else path


def web_rows(section: dict[str, Any]) -> list[Row]:
    """W9: one row per (store, page): median request time, spread, p95, server CPU."""
    checks = {c["contender"]: c for c in section.get("checks", [])}
    table: list[Row] = []
    for key, page in section["pages"].items():
        check = checks.get(key)
        target, result = _target(check) if check else ("", "")
        median = page["median_ms"]
        table.append(
            (
                page["store"],
                page["label"].split(": ", 1)[-1],
                _path(page["path"]),
                f"{median['median']:.1f} ms",
                f"{median['min']:.1f}-{median['max']:.1f} ms",
                f"{page['p95_all_ms']:.1f} ms",
                f"{page['server_cpu_ms_per_request']['median']:.2f} ms",
                target,
                result,
            )
        )
    return table


#: W11's figures per contender: (key in results.json, name, format).
SERVER_FIGURES = (
    ("script_us_per_step", "script time / step", "{:.1f} µs"),
    ("script_calls_per_step", "script calls / step", "{:.2f}"),
    ("us_per_script_call", "time / script call", "{:.1f} µs"),
    ("store_us_per_step", "store commands' time / step", "{:.1f} µs"),
    ("server_cpu_us_per_step", "server CPU / step", "{:.1f} µs"),
    ("seconds", "time (all sagas)", "{:.2f} s"),
)


def server_time_rows(section: dict[str, Any]) -> list[Row]:
    """W11: each version's server figures per step, then the ratios this version / 0.4.0."""
    table: list[Row] = []
    for c in section["contenders"].values():
        failed = sum(c.get("failed", []))
        for key, name, fmt in SERVER_FIGURES:
            figure = c[key]
            spread = f"{fmt.format(figure['min']).split()[0]}-{fmt.format(figure['max'])}"
            note = f"! {failed} sagas failed" if failed and key == "seconds" else ""
            table.append(("W11", c["label"], name, fmt.format(figure["median"]), spread, "", note))
    ratios = [row[:5] + row[6:] for row in _ratio_rows("W11", section)]
    if not section.get("baseline", {}).get("ran", True):
        ratios.append(("W11", "celery-saga-redis 0.4.0", "not run", "", "", "", "no baseline venv"))
    return table + ratios


def web_notes(section: dict[str, Any]) -> list[str]:
    """W9: how each store's executions were made (or that they were kept), what ran."""
    notes = []
    for kind, store in section.get("stores", {}).items():
        seeding = store["seeding"]
        executions = f"{seeding['executions']:,} stored executions"
        if seeding.get("kept"):
            made = f"{executions} kept from an earlier run (made by the store's own `create`)"
        else:
            made = (
                f"{executions} created for this run in {seeding['seconds']:.1f} s by the "
                f"store's own `create`, {seeding['processes']} processes at once"
            )
        notes.append(
            f"{kind}: {made}; plus one 50-step and one compensated execution run by a worker"
        )
    return notes


def run_note(section: dict[str, Any], results: dict[str, Any]) -> str:
    """How a table was made: repetitions, date, load average, machine, command."""
    run = section.get("run") or legacy_run(results)
    load = run.get("load_average") or {}
    loads = ""
    if load:
        loads = (
            "; load average (1, 5, 15 min) "
            + ", ".join(f"{x:.2f}" for x in load["start"])
            + " at the start, "
            + ", ".join(f"{x:.2f}" for x in load["end"])
            + " at the end"
        )
    quick = " (--quick: small sizes, a smoke run)" if run.get("quick") else ""
    return (
        f"{run.get('reps', '?')} repetitions{quick}, contenders alternating; "
        f"{run.get('date', '?')}{loads}; {run.get('cpus', '?')} cores, {run.get('cpu', '?')}; "
        f"command: `{run.get('command', 'nox -s bench')}`"
    )


def command_for(argv: Sequence[str]) -> str:
    """The ``nox -s bench`` command of run.py's `argv`, without this machine's paths."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LOCAL_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LOCAL_OPTIONS)):
            kept.append(arg)
    return "nox -s bench" + (" -- " + " ".join(kept) if kept else "")


def legacy_run(results: dict[str, Any]) -> dict[str, Any]:
    """The run record of a section from before sections kept their own: the run's."""
    config, machine = results.get("config", {}), results.get("machine", {})
    return {
        "reps": config.get("reps"),
        "quick": config.get("quick"),
        "date": machine.get("date"),
        "load_average": machine.get("load_average"),
        "cpus": machine.get("cpus"),
        "cpu": machine.get("cpu"),
        "command": config.get("command") or command_for(config.get("argv", [])),
    }


def _main_notes(results: dict[str, Any]) -> list[str]:
    """One line per run behind the main table: which workloads, and `run_note`."""
    notes: dict[str, list[str]] = {}
    for workload in MAIN:
        section = results.get(workload)
        if section and not (workload == "W4" and _by_length(section)):
            notes.setdefault(run_note(section, results), []).append(workload)
    return [f"{', '.join(names)}: {note}" for note, names in notes.items()]


def extra_tables(results: dict[str, Any]) -> list[tuple[str, str, Sequence[str], list[Row]]]:
    """The tables beside the main one: (workload, title, header, rows)."""
    tables: list[tuple[str, str, Sequence[str], list[Row]]] = []
    w4 = results.get("W4")
    if w4 and _by_length(w4):
        tables.append(("W4", TITLES["W4"], LENGTH_HEADER, length_rows(w4)))
        ratios = length_ratio_rows(w4)
        if ratios:
            tables.append(("W4", "W4: ratios", RATIO_HEADER, ratios))
    w6 = results.get("W6")
    if w6:
        body = section_rows("W6", w6["throughput"]) + section_rows("W6", w6["latency"])
        tables.append(("W6", TITLES["W6"], HEADER, body))
    w8 = results.get("W8")
    if w8:
        tables.append(("W8", TITLES["W8"], FOOTPRINT_HEADER, footprint_rows(w8)))
    w9 = results.get("W9")
    if w9:
        tables.append(("W9", TITLES["W9"], WEB_HEADER, web_rows(w9)))
    w10 = results.get("W10")
    if w10:
        tables.append(("W10", TITLES["W10"], HEADER, section_rows("W10", w10)))
    w11 = results.get("W11")
    if w11:
        tables.append(("W11", TITLES["W11"], FOOTPRINT_HEADER, server_time_rows(w11)))
    return tables


def _widths(table: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(row[i]) for row in table) for i in range(len(table[0]))]


def _text_table(header: Sequence[str], body: Sequence[Row], group: bool = False) -> str:
    """A table for a terminal; with `group`, a blank line between workloads."""
    widths = _widths([header, *body])
    line = "  ".join("-" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()

    out = [fmt(header), line]
    previous = body[0][0] if body else ""
    for row in body:
        if group and row[0] != previous:
            out.append("")
            previous = row[0]
        out.append(fmt(row))
    return "\n".join(out)


def render_text(results: dict[str, Any]) -> str:
    """Every table for a terminal: the main one, then W4 by length, W6, W8, W9, W10, W11."""
    out = []
    body = rows(results)
    if body:
        out += [_summary_line(results), *_main_notes(results), _text_table(HEADER, body, True)]
    for workload, title, header, table in extra_tables(results):
        if not table:
            continue
        section = results[workload]
        out += ["", title, run_note(section, results)]
        if workload == "W9":
            out += web_notes(section)
        out.append(_text_table(header, table))
    return "\n".join(out).strip() or "(no results)"


def _summary_line(results: dict[str, Any]) -> str:
    sizes = {
        w: s["sagas"]
        for w in MAIN
        if isinstance(s := results.get(w), dict) and isinstance(s.get("sagas"), int)
    }
    return (
        "celery-saga benchmark: contenders alternating; median and min-max over repetitions; "
        "sagas: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
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
        + "; drivers and libraries: "
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
    dbos = machine.get("dbos_venv")
    if isinstance(dbos, dict):
        lines.append(
            f"- DBOS's venv: dbos {dbos.get('dbos')}, SQLAlchemy {dbos.get('SQLAlchemy')}, "
            f"psycopg {dbos.get('psycopg')}, Python {dbos.get('python')}"
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


def _quick_warning(sections: Sequence[dict[str, Any]], results: dict[str, Any]) -> str:
    """A warning when any of `sections` came from a ``--quick`` run."""
    if any((sec.get("run") or legacy_run(results)).get("quick") for sec in sections):
        return (
            "\n\n**Smoke run (`--quick`): the sizes are small and the numbers are not "
            "comparable with a full run.**"
        )
    return ""


def _notes(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _extra_markdown(results: dict[str, Any]) -> list[str]:
    """The sections of W4 by length, W6, W8-W11, each with its run and command."""
    parts: list[str] = []
    done: set[str] = set()
    for workload, title, header, table in extra_tables(results):
        if not table:
            continue
        section = results[workload]
        if workload not in done:
            done.add(workload)
            parts += [
                f"## {title}",
                section["description"][:1].upper()
                + section["description"][1:]
                + "."
                + _quick_warning([section], results),
                f"Run: {run_note(section, results)}.",
            ]
            if workload == "W6":
                parts.append(
                    _notes(
                        [
                            f"Throughput: {section['throughput']['description']}.",
                            f"Latency: {section['latency']['description']}.",
                        ]
                    )
                )
            if workload == "W9":
                parts.append(_notes([f"{note}." for note in web_notes(section)]))
        else:
            parts.append(f"{title}:")
        parts.append(_markdown_table(header, table))
    return parts


def ci_load_markdown(under_load: dict[str, Any] | None) -> list[str]:
    """The section of W1 and W3 measured while CI ran (`CI_LOAD`), if there is one."""
    if not under_load or not any(w in under_load for w in MAIN):
        return []
    return [
        "## W1 and W3 under the load of a CI run",
        "The same workloads as in the first table, run while this repository's CI ran on "
        "the same machine (both streams of `.ci/run`: every test cell, lint, build and docs),"
        " so the figures are those that hold when the machine is that busy. Commands: "
        f"{CI_LOAD_COMMAND}.",
        _notes([f"Run of {note}." for note in _main_notes(under_load)]),
        _markdown_table(HEADER, rows(under_load)),
        *under_load.get("notes", []),
    ]


def render_markdown(results: dict[str, Any], under_load: dict[str, Any] | None = None) -> str:
    """docs/performance.md: the tables, the machine, how to reproduce, the method, and
    W1 and W3 under CI load (`under_load`, from `CI_LOAD`) when given."""
    config = results.get("config", {})
    main = [results[w] for w in MAIN if w in results and not (w == "W4" and _by_length(results[w]))]
    parts = [
        "# Performance",
        "<!-- Generated by benchmarks/report.py from benchmarks/results.json: do not edit. -->",
        "The benchmark harness (`nox -s bench`) runs this project against the same Celery "
        "tasks as a plain Celery chain, against `celery-saga==0.1.1` from PyPI, the package "
        "this project grew from, and against DBOS, which checkpoints durable steps to "
        "PostgreSQL in the caller's process. Every comparison runs in the same invocation, "
        "alternating the contenders; each table shows medians over the repetitions, their "
        "spread (min-max), ratios of medians (spread: the per-repetition ratios) against "
        "the targets, and under its title the run it comes from: repetitions, date, load "
        "average at the start and the end, the machine, and the command that reproduces it.",
    ]
    if main:
        parts += [
            "## Latest results",
            _summary_line(results) + "." + _quick_warning(main, results),
            _notes([f"Run of {note}." for note in _main_notes(results)]),
            _markdown_table(HEADER, rows(results)),
        ]
    parts += _extra_markdown(results)
    parts += ci_load_markdown(under_load)
    parts += [
        "## Workloads",
        "Redis broker and one prefork worker with 2 processes per contender (each on its own "
        "queue), unless said otherwise.",
        "\n".join(
            f"- **{_title(w, results[w])}**: {results[w]['description']}."
            for w in WORKLOADS
            if w in results
        ),
        "Targets: W1 celery-saga / plain chain ≤ 1.1 and celery-saga 0.1.1 / celery-saga "
        "≥ 1.4; W2 zero lost outputs for celery-saga (0.1.1's count beside it); W3 p50 at "
        "most the plain chain's; W4 at 5 steps the PostgreSQL store at most 1.3 times the "
        "Redis store, MariaDB and SQLite at most 1.6 times, and per store the workers' CPU "
        "per step at 200 steps at most 1.15 times that at 5 steps; W6 celery-saga on "
        "PostgreSQL at most DBOS's time, p50 at most 1.5 times DBOS's; W8 at most 2,500 "
        "bytes per finished saga in the Redis store; W9 every page's median request time "
        "under 200 ms; W11 this version's script time per step at most 0.5 times "
        "celery-saga-redis 0.4.0's."
        + (
            " W7 has none: its ratio nested saga / flat saga is the cost of a child saga."
            if "W7" in results
            else ""
        )
        + (
            " W10 has none: its ratio tracing on / tracing off is the cost of the tracing."
            if "W10" in results
            else ""
        ),
        "## The machine",
        "The machine of the latest run (each table says when it ran and how busy the machine was):",
        _machine_markdown(results.get("machine", {})),
        "## How to reproduce",
        "```bash\n"
        "nox -s bench                        # every workload: prints the tables, writes "
        "benchmarks/results.json and this page\n"
        "nox -s bench -- --quick             # a smoke run with small sizes\n"
        "nox -s bench -- --workloads W1,W3 --reps 7 --w1-sagas 1000\n"
        "nox -s bench -- --workloads W4      # each store at 5, 50 and 200 steps "
        "(--w4-lengths, --stores)\n"
        "nox -s bench -- --workloads W6      # DBOS against the PostgreSQL and Redis stores\n"
        "nox -s bench -- --workloads W8      # bytes per finished saga\n"
        "nox -s bench -- --workloads W9      # the web view over 100,000 stored executions\n"
        "nox -s bench -- --workloads W9 --w9-reseed   # ... made again\n"
        "nox -s bench -- --workloads W10     # W1 with the tracing on and off\n"
        "nox -s bench -- --workloads W11     # Redis server time per step against 0.4.0\n"
        "# W11's scripts' instructions (valgrind), after a bench run made the venvs:\n"
        "PYTHONPATH=benchmarks .nox/bench/bin/python benchmarks/script_instructions.py \\\n"
        "    --baseline-python .nox/bench/tmp/celery-saga-redis-0.4.0/bin/python\n"
        "# W1's worker instructions per saga, celery-saga against the plain chain (valgrind):\n"
        "PYTHONPATH=benchmarks .nox/bench/bin/python benchmarks/worker_instructions.py\n"
        "```",
        "A run with `--workloads` replaces the tables of those workloads and keeps the "
        "others; only a run of every workload (no `--workloads`) also runs the state-store "
        "benchmark (`benchmarks/stores.py`). The session builds this project's packages into "
        "its venv and makes two more venvs: one with `celery-saga==0.1.1` and "
        "`celery[redis]==5.7.0` for the original package, which has the same import name, "
        "and one with DBOS. It needs the services on their default local ports: Redis 6379, "
        "RabbitMQ 5672 (guest/guest), PostgreSQL 5432 (user postgres, database test; DBOS "
        "gets its own database, `bench_dbos`, created if absent) and MariaDB 3306 (root, "
        "database test); it starts a SecantusDB server for the mongodb store itself. "
        "For W11 it makes a third venv with celery-saga-core and celery-saga-redis 0.4.0, "
        "taken from this repository's commit 040c323 (`git archive`; left out, with a "
        "message, when git or that commit is missing, e.g. in a shallow clone), and W11 "
        "starts `redis-server` (from PATH) on free ports. "
        "`python benchmarks/run.py --help` lists every option.",
        "## How it is measured",
        "\n".join(
            [
                "- All workers start once, before any timing, and are warmed up. In each "
                "repetition every contender runs once; the order rotates by one each "
                "repetition. W1 splits each repetition into blocks (`--w1-blocks`, 4 by "
                "default): a contender starts a block of its sagas (100 of 400) and waits for "
                "them, then the next contender does, block by block, and a repetition's time "
                "is the sum of its blocks. The contenders thus take turns about every half "
                "second rather than every few seconds, so a change in the machine's load "
                "meets them alike.",
                "- Throughput (W1, W2, W4, W5, W6, W7, W10): the time from the first `run()` (or "
                "`apply_async()`) until every saga finished. Every Celery contender's caller "
                "learns that the same way: it reads the status of the oldest unfinished saga "
                "every 20 ms (this project: the store's `get_status`, what `SagaResult.status` "
                "reads; a chain: whether its last result exists; 0.1.1: its record), and moves "
                "on as soon as it finished. The CPU time used by each contender's worker "
                "processes during its runs is recorded too, as it is steadier than time on a "
                "shared machine.",
                "- Latency (W3, W6): `run()` then `get()` per saga. This project's `get()` "
                "waits for a notification from the store; the plain chain's "
                "`AsyncResult.get()` for one from the result backend; 0.1.1's "
                "`SagaResult.get()` polls its record, here every "
                f"{config.get('orig_get_interval', 0.005) * 1000:g} ms (its default, 0.5 s, "
                "would put each of its latencies above 500 ms).",
                "- W4: every (store, length) pair is a contender of its own, so a 200-step "
                "run and a 5-step run of a store alternate under the same load; a length L "
                "runs as many sagas as give the same number of steps as the 5-step run. The "
                "workers' CPU per step is the CPU of the store's worker processes during the "
                "run divided by its steps; its flatness is the per-repetition ratio of the "
                "longer length's CPU per step to the 5-step one's. Part of the difference "
                "is the workload's, not the store's: one step in five of a 5-step saga is "
                "its last, which sends no message, against one in 200; and 10 sagas of 200 "
                "steps keep at most 10 messages in flight where 400 of 5 keep hundreds, so "
                "the worker wakes for each one. Measured in one solo worker (its thread's "
                "CPU, the same 2,000 steps, one app per process), the Redis store's calls "
                "cost the same per step at both lengths (0.37-0.40 and 0.37-0.41 ms), the whole "
                "step 8-9% more at 200 steps (2.94-3.21 against 3.18-3.50 ms).",
                "- W6: DBOS runs in a driver process in its own venv (`dbos` from PyPI): "
                "`DBOS(config={'name': ..., 'system_database_url': ...})`, `DBOS.launch()`, "
                "a `@DBOS.workflow()` calling five `@DBOS.step()` functions that return an "
                "empty dict (as the saga's no-op tasks do). Throughput starts all workflows "
                "with `DBOS.start_workflow` and awaits every handle's result; latency calls "
                "the workflow function, which returns once it finished. DBOS has no broker "
                "and no worker: its steps run in the driver's threads, so the driver's CPU is "
                "shown as its workers' CPU. PostgreSQL's own CPU is counted for no contender. "
                "After every run, not timed, each contender deletes what it wrote "
                "(`DBOS.delete_workflows`, the store's `delete`).",
                "- W8: each repetition compacts what earlier runs deleted, keeps the sagas "
                "of one run, measures, then deletes them; the figures are the size "
                "differences divided by the number of sagas.",
                "- celery-saga 0.1.1 runs as its README and code want: `RedisSagaBackend(url=...)` "
                "installed with `set_default_backend` in its worker and its caller, its app "
                "current and default (its internal tasks are `shared_task`s using "
                "`current_app`), and a Redis result backend, which its chords (parallel "
                "groups) need.",
                "- Lost outputs (W2): every step adds a marker to a Redis set when it runs; "
                "once all sagas finished, a saga counts when its record lacks the output of "
                "a step that ran (for the plain chain, the step's result in the result "
                "backend).",
                "- W9: the stored executions are written through each store's own `create` "
                "(5 steps each; four saga names, 85% completed, 8% compensated, 4% failed, "
                "2% cancelled, 1% reverted; created over 30 days), by 4 processes at once, "
                "and kept between runs under names of their own (Redis key prefix "
                "`bench-web-<N>:`, PostgreSQL tables `bench_web_<N>_*`): a run makes them "
                "again only when the store does not hold exactly N (`--w9-reseed`: always). "
                "A worker then runs one `bench.steps50` saga and one `bench.compensated` "
                "saga on the store and stops; they are deleted when W9 ends. The web view "
                "is `celery -A bench_app saga web` (uvicorn, one process, read-only); every "
                "page is checked once (50 rows of the right status or name, 50 steps) and "
                "requested 5 times to warm up before any timing. A request is timed from "
                "sending it to having read the whole page, over one keep-alive connection "
                "per store; the median is the median of the repetitions' medians (spread: "
                "their min-max), p95 that of every request of the page together. The "
                "server's CPU per request is its process's CPU time during the "
                "repetition's requests divided by their number.",
                "- W10: the 'tracing on' contender has a worker of its own started with "
                "`CELERY_SAGA_BENCH_OTEL=1` (bench_app turns celery-saga-opentelemetry's "
                "`CelerySagaInstrumentor` on, with an SDK `TracerProvider` whose "
                "BatchSpanProcessor hands spans to an exporter that drops them), and the "
                "harness, every contender's producer, turns the same instrumentation on "
                "for its runs only. Before timing, one saga of each is checked: the "
                "'tracing on' one records the trace it was started in, the 'tracing off' "
                "one does not. Celery's own instrumentation "
                "(opentelemetry-instrumentation-celery) is off in both.",
                "- W11: each version's state store is alone on a private `redis-server` "
                "(no persistence), so `INFO commandstats` counts only its work; each "
                "repetition starts with FLUSHALL and CONFIG RESETSTAT. 0.4.0's worker "
                "and caller run in its venv (the caller is a small driver building "
                "bench_app's app), so a caller only talks to a worker of its own version. "
                "Redis counts a command a script calls both on its own and inside the "
                "script's time: the store's commands' time is the scripts' time plus the "
                "share of every other command's time that clients sent outside scripts, "
                "that share measured once per version, before the repetitions, in an "
                "untimed pass with the slowlog recording every command. Server CPU is the "
                "difference of `used_cpu_user + used_cpu_sys`. Where that time goes "
                "(instructions counted by valgrind's callgrind in a `redis-server` that "
                "replays each version's W11 calls, recorded with MONITOR, so the split does "
                "not depend on the machine's load: `benchmarks/script_instructions.py`): "
                "this version's scripts take 0.58 times 0.4.0's instructions per step "
                "(209k against 358k for 400 sagas); 57% of them in the scripts' Lua code "
                "(cutting and rewriting step objects' text, conditions, key names), 18% in "
                "passing arguments and replies, 20% in the commands they call (ZADD into "
                "the listing indexes 7%: six entries per saga). Since the indexes are scored "
                "in whole microseconds, an insert into a small index (a listpack, up to 128 "
                "entries) compares integers; scored in seconds, it parsed every stored score "
                "with strtod, 12% of 0.4.0's instructions. The time ratio above is higher "
                "than the instructions' (0.63-0.69 in a replay alone on the machine, on "
                "these figures): the store's time per call also holds what instructions do "
                "not count, such as memory stalls and, while the workers run, waiting for a "
                "CPU.",
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
    under_load = None
    if Path(args.out) == DOC and CI_LOAD.exists():
        under_load = json.loads(CI_LOAD.read_text())
    Path(args.out).write_text(render_markdown(results, under_load))
    if args.print:
        print(render_text(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
