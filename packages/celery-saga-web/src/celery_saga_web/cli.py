"""``celery -A proj saga web``: serve the web view of the app's saga store with uvicorn.

A subcommand of core's ``saga`` group (entry-point group ``celery_saga.commands``).
It reads the store the other ``celery saga`` commands read (``--backend``, else the
app's ``saga_backend``), binds to 127.0.0.1 unless told otherwise, and is read-only
unless started with ``--allow-actions``, which needs a token.
"""

from __future__ import annotations

import ipaddress

import click

from celery_saga.cli.commands import _app, _store

#: Where the token comes from when --token is not given.
TOKEN_ENV = "CELERY_SAGA_WEB_TOKEN"
TOKEN_SETTING = "saga_web_token"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command(name="web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="TCP port."
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let operators retry, resolve, cancel, revert and complete or fail external steps "
    "(each action needs the token).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    metavar="TOKEN",
    help=f"Operator token for actions (also ${TOKEN_ENV}, or the setting {TOKEN_SETTING}).",
)
@click.pass_context
def web(ctx: click.Context, host: str, port: int, allow_actions: bool, token: str | None) -> None:
    """Serve a web view of the sagas: list, graphs, timelines, metrics (read-only by default)."""
    import uvicorn

    from celery_saga_web.app import create_app

    app = _app(ctx)
    token = token or app.conf.get(TOKEN_SETTING) or None
    if allow_actions and not token:
        raise click.UsageError(
            "--allow-actions needs an operator token: give --token, set the environment "
            f"variable {TOKEN_ENV}, or the Celery setting {TOKEN_SETTING}"
        )
    if not _loopback(host):
        click.echo(
            f"warning: listening on {host}: anyone who can reach port {port} can read every "
            "saga's input and output. Put the view behind an authenticating proxy.",
            err=True,
        )
    web_app = create_app(
        _store(ctx),
        celery_app=app,
        allow_actions=allow_actions,
        token=token if allow_actions else None,
    )
    mode = "actions on (token required)" if allow_actions else "read-only"
    click.echo(f"celery-saga web view ({mode}) on http://{host}:{port}/", err=True)
    uvicorn.run(web_app, host=host, port=port, log_level="info")
