"""Subcommands of ``celery saga`` that other packages add.

A package declares one in the entry-point group ``celery_saga.commands``, as
``name = "module:command"`` (a click command); celery-saga-web adds ``web`` that way.
Names are read from the installed metadata without importing anything; a command is
imported only when it is run (or listed by ``--help``). One that cannot be loaded is
reported in a warning on stderr and left out: it never breaks the other commands.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

#: The entry-point group of ``celery saga`` subcommands.
GROUP = "celery_saga.commands"


def _entries() -> dict[str, EntryPoint]:
    """The declared subcommands by name (the first declaration of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=GROUP):
        found.setdefault(entry.name, entry)
    return found


def plugin_names() -> list[str]:
    """The names of the subcommands other packages declare, sorted; nothing is imported."""
    return sorted(_entries())


def load_plugin(name: str) -> click.Command | None:
    """Import the subcommand declared as `name`; None (with a warning) if it cannot be used."""
    entry = _entries().get(name)
    if entry is None:
        return None
    try:
        command = entry.load()
    except Exception as exc:  # a broken plugin must not take the other commands down
        _warn(entry, f"it cannot be imported ({type(exc).__name__}: {exc})")
        return None
    if not isinstance(command, click.Command):
        _warn(entry, f"it is a {type(command).__name__}, not a click command")
        return None
    return command


def _warn(entry: EntryPoint, why: str) -> None:
    dist = getattr(entry.dist, "name", None) or "an installed package"
    click.echo(
        f"warning: `celery saga {entry.name}` ({entry.value}, from {dist}, entry-point group "
        f"{GROUP}) is left out: {why}. Reinstall or upgrade that package, or uninstall it.",
        err=True,
    )
