"""Where the Redis store's script time goes: W11's calls replayed under callgrind.

Why: W11 times the store's scripts on a machine whose load moves the figures; counting
instructions does not depend on that load, and says which part of the scripts' work
(their Lua code, passing arguments and replies, the commands they call) to cut.

How: for each version (this one; 0.4.0 with ``--baseline-python``, a venv such as the
one ``nox -s bench`` makes for W11), N sagas of 5 no-op steps run through that
version's worker and caller on a private ``redis-server`` while MONITOR records the
commands clients send (not those scripts call). A second ``redis-server``, run by
valgrind's callgrind collecting only inside EVALSHA, loads that version's scripts and
replays the recording in order; ``callgrind_annotate`` gives the instructions, in all
and in the functions named below. Needs ``valgrind``, ``callgrind_annotate`` and
``redis-server`` on PATH. Not part of ``nox -s bench``: a replay under callgrind takes
a minute or two. Run it with the bench venv's interpreter, for example::

    PYTHONPATH=benchmarks .nox/bench/bin/python benchmarks/script_instructions.py \\
        --baseline-python .nox/bench/tmp/celery-saga-redis-0.4.0/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import redis
from processes import Driver, Worker, free_port, wait
from server_time import STEPS, PrivateRedis, settle

HERE = Path(__file__).parent
#: Commands of the harness, not of the store: left out of the recording.
NOT_RECORDED = {"flushall", "config", "info", "slowlog", "client", "ping", "monitor"}
NOT_RECORDED |= {"subscribe", "unsubscribe", "hello", "select", "script"}
#: callgrind's functions (inclusive counts) that split the scripts' instructions.
FUNCTIONS = ("evalShaCommand", "luaCallFunction", "lua_pcall", "scriptCall", "parseReply")
FUNCTIONS += ("lua_gc", "zaddCommand", "strtod")
_LINE = re.compile(rb"^[\d.]+ \[\d+ ([^\]]+)\] ")
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("a"): 7, ord("b"): 8}


def _unquote(text: bytes) -> bytes:
    """One argument of a MONITOR line (Redis quotes it as sdscatrepr does)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == 92:  # backslash
            code = text[i + 1]
            if code == ord("x"):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out.append(_ESCAPES.get(code, code))
            i += 2
            continue
        out.append(text[i])
        i += 1
    return bytes(out)


def parse_monitor(lines: list[bytes]) -> list[list[bytes]]:
    """The commands of MONITOR lines that clients sent (not scripts, not the harness)."""
    commands = []
    for line in lines:
        match = _LINE.match(line)
        if not match or match.group(1) == b"lua":
            continue
        args = [_unquote(a) for a in _ARG.findall(line[match.end() :])]
        if args and args[0].decode().lower() not in NOT_RECORDED:
            commands.append(args)
    return commands


def scripts_of(python: str) -> dict[str, str]:
    """The Lua scripts of the celery_saga_redis that `python` imports (its `scripts` and,
    from 0.5.0 on, `step_scripts`), by name."""
    code = (
        "import importlib, json\nfound = {}\n"
        "for name in ('scripts', 'step_scripts'):\n"
        "    try:\n"
        "        m = importlib.import_module('celery_saga_redis.' + name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    found.update((k, v) for k, v in vars(m).items() if isinstance(v, str) "
        "and 'redis.call' in v and k.isupper())\n"
        "print(json.dumps(found))"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    scripts: dict[str, str] = json.loads(out.stdout)
    return scripts


def record(python: str | None, n: int, broker: str, stats_url: str) -> list[list[bytes]]:
    """The commands the store sends for `n` sagas, this version's or `python`'s."""
    with contextlib.ExitStack() as stack:
        server = PrivateRedis("replay")
        stack.callback(server.stop)
        queue = f"bench-replay-{os.getpid()}"
        env = {"BENCH_BROKER": broker, "BENCH_STORE": server.url, "BENCH_STATS_URL": stats_url}
        worker = Worker("saga", queue, env, python=python or sys.executable)
        stack.callback(worker.stop)
        if python is None:
            from bench_app import build
            from server_time import _in_process

            run = _in_process(build("saga", queue, server.url, broker), 60)
        else:
            from server_time import _by_driver

            driver_env = {**env, "BENCH_QUEUE": queue, "BENCH_ROLE": "saga"}
            driver = Driver("replay", python, "server_time_driver.py", driver_env)
            stack.callback(driver.stop)
            run = _by_driver(driver, 60)
        worker.ready()
        run(20)
        settle(server.client)
        server.client.flushall()
        lines: list[bytes] = []
        monitor = redis.Redis.from_url(server.url)
        stack.callback(monitor.close)
        connection = monitor.connection_pool.get_connection()
        connection.send_command("MONITOR")
        connection.read_response()

        def read() -> None:
            with contextlib.suppress(redis.ConnectionError, OSError, ValueError):
                while True:
                    line = connection.read_response()
                    lines.append(line if isinstance(line, bytes) else str(line).encode())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _, failed = run(n)
        if failed:
            raise SystemExit(f"{failed} of {n} sagas failed while recording")
        settle(server.client)
        server.client.set("bench:replay:end", "1")
        wait(lambda: any(b"bench:replay:end" in line for line in lines), 30, "MONITOR")
        connection.disconnect()
    return [c for c in parse_monitor(lines) if b"bench:replay:end" not in c]


def replay(scripts: dict[str, str], commands: list[list[bytes]]) -> dict[str, int]:
    """Instructions inside EVALSHA while a callgrind'd redis-server replays `commands`."""
    for tool in ("valgrind", "callgrind_annotate", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"this needs {tool} on PATH")
    port = free_port()
    out = HERE / f".callgrind-{port}.out"
    server = subprocess.Popen(
        [
            *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
            "--toggle-collect=evalShaCommand",
            *("redis-server", "--port", str(port), "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def up() -> bool:
        with contextlib.suppress(redis.ConnectionError):
            return bool(client.ping())
        return False

    try:
        wait(up, 120, "redis-server under valgrind", interval=0.2)
        for text in scripts.values():
            client.script_load(text)
        for command in commands:
            with contextlib.suppress(redis.ResponseError):
                client.execute_command(*command)
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # SHUTDOWN closes the connection
    finally:
        client.close()
        server.wait(120)
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out.unlink()
    counts = {"total": 0}
    for line in annotated.splitlines():
        line = line.strip()
        number = line.split(" ", 1)[0].replace(",", "")
        if not number.isdigit():
            continue
        if "PROGRAM TOTALS" in line:
            counts["total"] = int(number)
        for name in FUNCTIONS:
            if f":{name} " in line and name not in counts:
                counts[name] = int(number)
    return counts


def split(counts: dict[str, int], steps: int) -> dict[str, float]:
    """Instructions per step: in all, and by where they go."""
    get = counts.get
    commands = get("scriptCall", 0) + get("parseReply", 0)
    calls = get("luaCallFunction", 0)
    return {
        "all": counts["total"] / steps,
        "Lua code, redis.call's own": (get("lua_pcall", 0) - commands) / steps,
        "commands scripts call": commands / steps,
        "  of which ZADD": get("zaddCommand", 0) / steps,
        "arguments and replies": (calls - get("lua_pcall", 0) - get("lua_gc", 0)) / steps,
        "Lua's garbage collector": get("lua_gc", 0) / steps,
        "strtod (anywhere)": get("strtod", 0) / steps,
    }


def main(argv: list[str] | None = None) -> int:
    """Record and replay each version; print instructions per step and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=400)
    parser.add_argument("--baseline-python", help="a venv's python with 0.4.0")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--stats-url", default="redis://127.0.0.1:6379/5")
    args = parser.parse_args(argv)
    versions: dict[str, str | None] = {"this version": None}
    if args.baseline_python:
        versions["celery-saga-redis 0.4.0"] = args.baseline_python
    figures: dict[str, dict[str, float]] = {}
    for label, python in versions.items():
        commands = record(python, args.sagas, args.broker, args.stats_url)
        counts = replay(scripts_of(python or sys.executable), commands)
        figures[label] = split(counts, args.sagas * STEPS)
    rows: list[Any] = list(next(iter(figures.values())))
    print(f"{args.sagas} sagas of {STEPS} no-op steps; instructions per step inside EVALSHA")
    print(f"{'':28}" + "".join(f"{label:>26}" for label in figures))
    for row in rows:
        print(f"{row:28}" + "".join(f"{f[row]:>26,.0f}" for f in figures.values()))
    if len(figures) == 2:
        now, base = (f["all"] for f in figures.values())
        print(f"this version / 0.4.0: {now / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
