"""The ``saga`` command group and its subcommands (click, like Celery's own commands).

Every command reads the store named by ``--backend`` (before or after the subcommand)
or by the app's ``saga_backend``, opened so that it creates nothing: a mistyped URL
is reported as not found (exit 3), never left behind as an empty store. Without either,
the store is this process's empty memory store, and a warning on stderr says so.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import click

from celery_saga import registry
from celery_saga.config import backend_for, is_fallback
from celery_saga.errors import InvalidSagaId, SagaError, StoreNotFound, read_error
from celery_saga.ids import validate_saga_id
from celery_saga.models import SagaExecution, SagaStatus, now

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend
    from celery_saga.runtime.binding import Runtime

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
#: `recover` went on past executions it could not recover (each reported).
EXIT_SOME_ERRORS = 4
#: The saga's stored record exists but cannot be read (damaged, or from a newer schema).
EXIT_UNREADABLE = 5
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` or ``1w`` as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a duration: use a number of seconds or e.g. 30s, 15m, 2h, 7d, 1w"
        )
    return float(match[1]) * _UNITS.get(match[2] or "s", 1)


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A click parameter type for durations."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


class SagaId(click.ParamType):  # type: ignore[type-arg]
    """A click parameter type that validates saga ids before they reach a query."""

    name = "saga_id"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return validate_saga_id(value)
        except InvalidSagaId as exc:
            self.fail(str(exc), param, ctx)


def _app(ctx: click.Context) -> Celery:
    app: Celery | None = getattr(ctx.find_root().obj, "app", None)
    if app is None:  # run outside the `celery` command (tests call the group directly)
        from celery import current_app

        app = current_app._get_current_object()
    return app


_BACKEND = "celery_saga.backend"


def _store(ctx: click.Context) -> SagaBackend:
    """The store to read: --backend, else the app's, opened so that it creates nothing."""
    app = _app(ctx)
    explicit = ctx.meta.get(_BACKEND)
    if is_fallback(app, explicit):
        _warn_memory_store(ctx)
    return backend_for(app, explicit, read_only=True)


def _warn_memory_store(ctx: click.Context) -> None:
    """Say on stderr that nothing named a store, so the command sees an empty one."""
    command = f"celery saga {ctx.info_name}"
    given_app = bool(ctx.find_root().params.get("app"))
    why = (
        "the app (-A) has no saga_backend setting and no --backend was given"
        if given_app
        else "no app (-A) and no --backend were given"
    )
    click.echo(
        f"warning: {why}, so this reads an in-process memory store, which is empty: not "
        f"your sagas. Name the app whose `saga_backend` setting names the store (celery -A "
        f"proj {command.removeprefix('celery ')}), or the store itself ({command} --backend "
        "redis://localhost:6379/1).",
        err=True,
    )


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _not_found(store: SagaBackend, exc: StoreNotFound) -> NoReturn:
    """A store opened for reading is not there: say so, exit 3 (nothing was created)."""
    _fail(f"no saga store at {store!r}: {exc}", EXIT_NOT_FOUND)


def _load(ctx: click.Context, saga_id: str) -> SagaExecution:
    store = _store(ctx)
    try:
        execution = store.get(saga_id)
    except StoreNotFound as exc:
        _not_found(store, exc)
    except Exception as exc:  # one clear line, never a traceback
        _fail(read_error(saga_id, exc), EXIT_UNREADABLE)
    if execution is None:
        _fail(f"no saga {saga_id} in {store!r}", EXIT_NOT_FOUND)
    return execution


def _runtime(ctx: click.Context, execution: SagaExecution) -> Runtime:
    from celery_saga.runtime.binding import Runtime

    try:
        saga_obj = registry.lookup(execution.saga_name, _app(ctx))
    except SagaError as exc:
        _fail(
            f"{exc}. Run this command with -A pointing at the module that defines the saga.",
            EXIT_REFUSED,
        )
    return Runtime.of(saga_obj)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _took(start: float | None, end: float | None) -> str:
    return "-" if start is None or end is None else f"{(end - start) * 1000:.1f}ms"


_BACKEND_HELP = "State store URL (default: the app's saga_backend setting)."


def _set_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """A subcommand's --backend: the same setting as the group's (it wins if both)."""
    if value is not None:
        ctx.meta[_BACKEND] = value


class _SagaGroup(click.Group):
    """The ``saga`` group: its --backend is accepted after the subcommand too.

    ``celery saga list --backend URL`` reads as naturally as ``celery saga --backend
    URL list``; each subcommand gets the option as it is added. Other packages add
    subcommands through the entry-point group ``celery_saga.commands`` (see
    `celery_saga.cli.plugins`), loaded when asked for; a built-in name wins.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        from celery_saga.cli.plugins import plugin_names

        return sorted({*super().list_commands(ctx), *plugin_names()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None:  # not kept in the group: what is installed may change
            from celery_saga.cli.plugins import load_plugin

            found = load_plugin(cmd_name)
            if found is not None:
                _with_backend_option(found)
        return found

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _with_backend_option(cmd)
        super().add_command(cmd, name)


def _with_backend_option(cmd: click.Command) -> None:
    """Give a subcommand the group's --backend option (unless it has its own)."""
    if not any(p.name == "backend" for p in cmd.params):
        cmd.params.append(
            click.Option(
                ["--backend"],
                default=None,
                metavar="URL",
                expose_value=False,
                callback=_set_backend,
                help=_BACKEND_HELP,
            )
        )


@click.group(name="saga", cls=_SagaGroup)
@click.option("--backend", "backend", default=None, metavar="URL", help=_BACKEND_HELP)
@click.pass_context
def saga(ctx: click.Context, backend: str | None) -> None:
    """Inspect and operate sagas: list, show, graph, stats, cancel, retry, resolve, recover,
    purge, complete, fail, revert."""
    ctx.meta[_BACKEND] = backend


@saga.command(name="list")
@click.option("--status", type=click.Choice([s.value for s in SagaStatus]), default=None)
@click.option("--name", default=None, help="Only executions of this saga.")
@click.option("--older-than", type=Duration(), default=None, help="Created at least this long ago.")
@click.option("--newer-than", type=Duration(), default=None, help="Created at most this long ago.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", default=None, help="Resume after a previous page (see --json).")
@click.option(
    "--parent",
    type=SagaId(),
    default=None,
    metavar="SAGA_ID",
    help="Only the child sagas of this execution.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--wide", is_flag=True, help="Show whole errors (the table cuts them at 60).")
@click.pass_context
def list_(
    ctx: click.Context,
    status: str | None,
    name: str | None,
    older_than: float | None,
    newer_than: float | None,
    limit: int,
    cursor: str | None,
    parent: str | None,
    as_json: bool,
    wide: bool,
) -> None:
    """List executions, newest first (with --parent: the children of one execution).

    The table cuts errors at 60 characters unless --wide; --json gives them whole.
    """
    store = _store(ctx)
    filters: dict[str, Any] = {}
    if parent is not None:  # only when asked: a store of an older contract lacks it
        filters["parent_id"] = parent
    try:
        page = store.list(
            status=status,
            name=name,
            limit=limit,
            cursor=cursor,
            created_before=None if older_than is None else now() - older_than,
            created_after=None if newer_than is None else now() - newer_than,
            **filters,
        )
    except StoreNotFound as exc:
        _not_found(store, exc)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    except TypeError as exc:
        if "parent_id" not in str(exc):
            raise
        _fail(
            f"{store!r} cannot list the children of an execution (its list() takes no "
            "parent_id): upgrade the store's package to one for celery-saga-core 0.4",
            EXIT_USAGE,
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "items": [
                        {
                            "saga_id": s.saga_id,
                            "name": s.saga_name,
                            "status": s.status.value,
                            "created_at": s.created_at,
                            "updated_at": s.updated_at,
                            "finished_at": s.finished_at,
                            "error": s.error,
                            "parent_id": s.parent_id,
                        }
                        for s in page.items
                    ],
                    "cursor": page.cursor,
                }
            )
        )
        return
    click.echo(f"{'SAGA ID':<36}  {'NAME':<24} {'STATUS':<13} {'CREATED':<19}  ERROR")
    for s in page.items:
        error = " ".join((s.error or "").split())  # one line per execution
        click.echo(
            f"{s.saga_id:<36}  {s.saga_name[:24]:<24} {s.status.value:<13} "
            f"{_when(s.created_at):<19}  {error if wide else error[:60]}"
        )
    if page.cursor:
        click.echo(f"(more: --cursor {page.cursor})")


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.option("--reason", default=None, help="Recorded with the cancellation.")
@click.pass_context
def cancel(ctx: click.Context, saga_id: str, reason: str | None) -> None:
    """Cancel an execution: no new step starts, done steps are compensated."""
    from celery_saga.runtime.compensation import cancel as cancel_saga

    ex = _load(ctx, saga_id)
    if not cancel_saga(_runtime(ctx, ex), saga_id, reason):
        _fail(
            f"saga {saga_id} is {ex.status.value}: only running sagas can be cancelled",
            EXIT_REFUSED,
        )
    click.echo(f"saga {saga_id}: cancelled; compensating")


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.pass_context
def retry(ctx: click.Context, saga_id: str) -> None:
    """Retry a FAILED saga's failed compensations, or move a stalled one on."""
    from celery_saga.runtime.operator import retry_compensations

    ex = _load(ctx, saga_id)
    if not retry_compensations(_runtime(ctx, ex), saga_id):
        _fail(f"saga {saga_id} is {ex.status.value}: nothing to retry", EXIT_REFUSED)
    click.echo(f"saga {saga_id}: compensation resumed")


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.argument("step", type=click.IntRange(min=0))
@click.option("--note", required=True, help="What was done by hand (recorded).")
@click.pass_context
def resolve(ctx: click.Context, saga_id: str, step: int, note: str) -> None:
    """Mark a failed compensation as done by hand; the saga ends once none is left."""
    from celery_saga.runtime.operator import resolve_compensation

    ex = _load(ctx, saga_id)
    if step >= len(ex.steps):
        _fail(f"saga {saga_id} has no step {step} (it has {len(ex.steps)})", EXIT_USAGE)
    if not resolve_compensation(_runtime(ctx, ex), saga_id, step, note):
        _fail(
            f"step {step} of saga {saga_id} is {ex.step(step).status.value}, not "
            "compensation_failed",
            EXIT_REFUSED,
        )
    click.echo(f"saga {saga_id}: step {step} resolved by hand")


@saga.command()
@click.option(
    "--stalled-after",
    type=Duration(),
    default=None,
    help="No progress for this long counts as stalled (default: setting).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def recover(ctx: click.Context, stalled_after: float | None, as_json: bool) -> None:
    """Resume stalled executions of the sagas this app defines (safe to run anywhere)."""
    from celery_saga.runtime.recovery import recover as run_recovery

    report = run_recovery(_app(ctx), stalled_after=stalled_after)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for item in report.resumed:
            click.echo(f"{item.saga_id}  {item.action}")
        for saga_id, reason in report.errors:
            click.echo(f"error: {saga_id}: {reason}", err=True)
        click.echo(
            f"examined {report.examined}, acted on {report.acted}, errors {len(report.errors)}"
        )
    if report.errors:
        sys.exit(EXIT_SOME_ERRORS)


@saga.command()
@click.option(
    "--older-than",
    type=Duration(),
    required=True,
    help="Delete executions that finished at least this long ago.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, older_than: float, yes: bool) -> None:
    """Delete finished executions older than a retention period (never unfinished ones)."""
    store = _store(ctx)
    if not yes:
        click.confirm(
            f"Delete every finished saga older than {older_than:.0f}s from {store!r}?", abort=True
        )
    try:
        removed = store.purge(now() - older_than)
    except StoreNotFound as exc:
        _not_found(store, exc)
    click.echo(f"purged {removed} finished executions")
