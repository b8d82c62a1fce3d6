"""``celery saga web``: found through core's plugin entry point, refusing actions without a
token, serving the app's store from a real ``celery`` process; a broken plugin warns."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner
from support import REDIS_URL, STORE_DB, drop_prefix, free_ports, poll, require

from celery_saga.backends.registry import backend_from_url
from celery_saga.cli import saga as saga_cli
from celery_saga.cli.commands import EXIT_USAGE
from celery_saga.testing import make_execution


def _app() -> Celery:
    return Celery("web-cli", broker="memory://", set_as_current=False)


def test_web_is_a_subcommand_of_celery_saga() -> None:
    result = CliRunner().invoke(saga_cli, ["--help"], obj=SimpleNamespace(app=_app()))
    assert result.exit_code == 0, result.output
    assert "web" in result.output.split("Commands:")[1]
    result = CliRunner().invoke(saga_cli, ["web", "--help"], obj=SimpleNamespace(app=_app()))
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--allow-actions", "--token", "--backend"):
        assert option in result.output
    assert "127.0.0.1" in result.output and "8787" in result.output


def test_allow_actions_without_a_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_SAGA_WEB_TOKEN", raising=False)
    result = CliRunner().invoke(
        saga_cli,
        ["web", "--allow-actions", "--backend", "memory://"],
        obj=SimpleNamespace(app=_app()),
    )
    assert result.exit_code == EXIT_USAGE
    assert "--allow-actions needs an operator token" in result.output
    assert "CELERY_SAGA_WEB_TOKEN" in result.output and "saga_web_token" in result.output


def test_a_broken_plugin_warns_and_the_other_commands_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "broken_saga_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-saga-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[celery_saga.commands]\n"
        "broken = no_such_module_for_saga_tests:command\n"
        "notacommand = os:sep\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    obj = SimpleNamespace(app=_app())
    listing = CliRunner().invoke(saga_cli, ["--help"], obj=obj)
    assert listing.exit_code == 0, listing.output
    assert "celery saga broken" in listing.output and "cannot be imported" in listing.output
    assert "not a click command" in listing.output
    assert "broken-saga-plugin" in listing.output
    assert "list" in listing.output and "web" in listing.output
    ran = CliRunner().invoke(saga_cli, ["list", "--backend", "memory://", "--json"], obj=obj)
    assert ran.exit_code == 0, ran.output
    unknown = CliRunner().invoke(saga_cli, ["broken"], obj=obj)
    assert unknown.exit_code == EXIT_USAGE
    assert "No such command 'broken'" in unknown.output


def test_celery_saga_web_serves_the_apps_store(tmp_path: Path) -> None:
    require(REDIS_URL, 6379, "Redis")
    prefix = f"webcli-{os.urandom(4).hex()}:"
    store_url = f"{REDIS_URL}/{STORE_DB}?prefix={prefix}"
    execution = make_execution(name="cli-visible")
    backend_from_url(store_url).create(execution)
    (tmp_path / "webcliapp.py").write_text(
        textwrap.dedent(
            """
            import os
            from celery import Celery

            app = Celery("webcli", broker="memory://")
            app.conf.saga_backend = os.environ["WEB_CLI_STORE"]
            """
        )
    )
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "WEB_CLI_STORE": store_url,
        "CELERY_SAGA_WEB_TOKEN": "from-the-environment",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webcliapp", "saga", "web", "--port", str(port),
             "--allow-actions"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the web view exited:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        poll(up, 60, pytest.fail, "celery saga web to answer /healthz")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            page = response.read().decode()
        assert execution.saga_id in page
        assert "actions on (token required)" in page  # the token came from the environment
        assert f"on http://127.0.0.1:{port}/" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
        drop_prefix(REDIS_URL, STORE_DB, prefix)
