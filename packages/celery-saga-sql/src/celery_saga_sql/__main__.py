"""``python -m celery_saga_sql``: create, upgrade or inspect the store's tables.

    python -m celery_saga_sql upgrade postgresql://user@host/db [--table-prefix saga_]
    python -m celery_saga_sql version postgresql://user@host/db

Run ``upgrade`` once per deployment (before starting workers) when the workers
run with ``create_tables=False``, for instance because their database user may
not create tables. It is safe to run again: an up-to-date schema is left as is.
"""

from __future__ import annotations

import click
from sqlalchemy import Engine

from celery_saga.errors import SchemaVersionError
from celery_saga_sql import migrations
from celery_saga_sql.engines import make_engines
from celery_saga_sql.urls import DEFAULT_TABLE_PREFIX, parse_store_url, validate_table_prefix
from celery_saga_sql.version import __version__

_PREFIX_HELP = "Table prefix (default: the URL's ?table_prefix=, else 'saga_')."


def _resolve(url: str, table_prefix: str | None) -> tuple[str, str, Engine]:
    try:
        parsed = parse_store_url(url)
        prefix = validate_table_prefix(table_prefix or parsed.table_prefix or DEFAULT_TABLE_PREFIX)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    engine, reader = make_engines(parsed)
    reader.dispose()
    return parsed.redacted(), prefix, engine


@click.group()
@click.version_option(__version__, prog_name="celery-saga-sql")
def cli() -> None:
    """Manage the tables of the celery-saga SQL state store."""


@cli.command()
@click.argument("url")
@click.option("--table-prefix", default=None, help=_PREFIX_HELP)
def upgrade(url: str, table_prefix: str | None) -> None:
    """Create the tables at URL, or upgrade them to this package's schema version."""
    where, prefix, engine = _resolve(url, table_prefix)
    try:
        click.echo(f"database: {where}  table prefix: {prefix!r}")
        before = migrations.current_version(engine, prefix)
        click.echo(f"schema version before: {before}")
        result = migrations.upgrade(engine, prefix)
        for version in result.applied:
            described = next(m for m in migrations.MIGRATIONS if m.version == version)
            click.echo(f"  applied {version}: {described.description}")
        click.echo(f"schema version after: {result.after}")
    except SchemaVersionError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()


@cli.command()
@click.argument("url")
@click.option("--table-prefix", default=None, help=_PREFIX_HELP)
def version(url: str, table_prefix: str | None) -> None:
    """Print the schema version of the tables at URL (0: no tables yet)."""
    where, prefix, engine = _resolve(url, table_prefix)
    try:
        found = migrations.current_version(engine, prefix)
        click.echo(f"database: {where}  table prefix: {prefix!r}")
        click.echo(f"schema version: {found} (this celery-saga-sql writes {migrations.LATEST})")
    finally:
        engine.dispose()


if __name__ == "__main__":  # pragma: no cover
    cli(prog_name="python -m celery_saga_sql")
