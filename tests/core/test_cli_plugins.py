"""Subcommands of ``celery saga`` from other packages (entry-point group
``celery_saga.commands``): found by name, loaded when run, a broken one only warns."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_saga.cli import saga as saga_cli
from celery_saga.cli.commands import EXIT_USAGE
from celery_saga.cli.plugins import GROUP, load_plugin, plugin_names

PLUGIN = '''
import click

from celery_saga.cli.commands import _store


@click.command()
@click.argument("who")
@click.pass_context
def hello(ctx, who):
    """Say hello (a plugin command)."""
    click.echo(f"hello {who} from {type(_store(ctx)).__name__}")


@click.command()
def shadow():
    """Would replace the built-in list."""
    click.echo("not the built-in list")
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution (a dist-info on sys.path) declaring four subcommands."""
    (tmp_path / "saga_plugin_example.py").write_text(PLUGIN)
    dist = tmp_path / "saga_plugin_example-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: saga-plugin-example\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "hello = saga_plugin_example:hello\n"
        "list = saga_plugin_example:shadow\n"
        "broken = saga_plugin_missing_module:command\n"
        "notacommand = os:sep\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run(*args: str) -> Result:
    app = Celery("cli-plugins", broker="memory://", set_as_current=False)
    return CliRunner().invoke(saga_cli, list(args), obj=SimpleNamespace(app=app))


@pytest.mark.usefixtures("plugins")
def test_a_plugin_command_runs_with_the_groups_options() -> None:
    assert {"hello", "broken", "notacommand"} <= set(plugin_names())
    result = run("hello", "ann", "--backend", "memory://")  # --backend after it, as built-ins
    assert result.exit_code == 0, result.output
    assert "hello ann from MemorySagaBackend" in result.output
    listed = run("--help")
    assert "hello" in listed.output and "Say hello (a plugin command)." in listed.output


@pytest.mark.usefixtures("plugins")
def test_a_built_in_name_wins_over_a_plugin() -> None:
    result = run("list", "--backend", "memory://", "--json")
    assert result.exit_code == 0, result.output
    assert '"items": []' in result.output
    assert "not the built-in list" not in result.output


@pytest.mark.usefixtures("plugins")
def test_a_broken_plugin_warns_and_the_other_commands_work() -> None:
    listed = run("--help")
    assert listed.exit_code == 0, listed.output
    assert "`celery saga broken`" in listed.output and "cannot be imported" in listed.output
    assert "saga_plugin_missing_module" in listed.output and "saga-plugin-example" in listed.output
    assert "`celery saga notacommand`" in listed.output and "not a click command" in listed.output
    assert "show" in listed.output and "hello" in listed.output
    broken = run("broken")
    assert broken.exit_code == EXIT_USAGE
    assert "No such command 'broken'" in broken.output
    assert load_plugin("broken") is None
    assert run("list", "--backend", "memory://").exit_code == 0


def test_no_plugin_of_that_name() -> None:
    assert load_plugin("no-such-plugin-anywhere") is None
    result = run("no-such-plugin-anywhere")
    assert result.exit_code == EXIT_USAGE
    assert "warning" not in result.output
