"""``celery saga show`` and ``celery saga graph``: one execution or one definition, seen.

``show`` prints an execution's steps, its timeline (``--timeline``), its whole record
as JSON (``--json``: the keys of `SagaResult.steps`, timestamps in ISO 8601 UTC), or
follows it live until it ends (``--follow``). ``graph`` draws a registered saga's
definition or a stored execution as Mermaid, DOT or SVG.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click

from celery_saga import registry
from celery_saga.cli.commands import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    SagaId,
    _app,
    _fail,
    _load,
    _not_found,
    _store,
    _took,
    _when,
    saga,
)
from celery_saga.cli.follow import follow
from celery_saga.errors import (
    InvalidSagaId,
    SagaError,
    SagaNotRegistered,
    StoreNotFound,
    read_error,
)
from celery_saga.graphs import definition_graph, execution_graph, to_dot, to_mermaid, to_svg
from celery_saga.ids import validate_saga_id
from celery_saga.models import SagaExecution, SagaStatus, StepKind
from celery_saga.timeline import bars, render_text
from celery_saga.views import execution_view

#: The exit code of ``show --follow`` stopped by Ctrl-C (128 + SIGINT, as shells use).
EXIT_INTERRUPTED = 130
_RENDERERS = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--timeline", is_flag=True, help="Every attempt and compensation, with start, end, worker."
)
@click.option(
    "--width",
    type=click.IntRange(10, 400),
    default=40,
    show_default=True,
    help="Width of the timeline's bars, in characters.",
)
@click.option(
    "--follow",
    "follow_",
    is_flag=True,
    help="Print progress until the saga ends; exit 0 if it COMPLETED, else 1.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.01, 60),
    default=0.5,
    show_default=True,
    help="Seconds between reads with --follow.",
)
@click.pass_context
def show(
    ctx: click.Context,
    saga_id: str,
    as_json: bool,
    timeline: bool,
    width: int,
    follow_: bool,
    interval: float,
) -> None:
    """Show one execution: every step with status, attempts, durations, errors.

    --timeline draws every attempt and compensation as a text Gantt; --json prints
    the whole record (with --timeline, its bars too); --follow prints a line per
    stage as it progresses and exits 0 if the saga COMPLETED, 1 if it ended any other
    way, 130 on Ctrl-C (the saga goes on).
    """
    if follow_:
        if as_json or timeline:
            _fail(
                "--follow prints progress lines: use it without --json and --timeline", EXIT_USAGE
            )
        _follow(ctx, saga_id, interval)
    ex = _load(ctx, saga_id)
    if as_json:
        data = execution_view(ex, iso=True)
        if timeline:
            data["timeline"] = [bar.as_dict() for bar in bars(ex)]
        click.echo(json.dumps(data))
        return
    _header(ex)
    if timeline:
        click.echo(render_text(ex, width=width), nl=False)
        return
    for s in ex.steps:
        what = s.task_name if s.kind == StepKind.TASK.value else f"{s.task_name} ({s.kind})"
        worker = f"  on {s.worker}" if s.worker else ""
        click.echo(
            f"  [{s.index}] stage {s.stage}  {what:<28} {s.status.value:<19} "
            f"attempt {s.attempt}  {_took(s.started_at, s.finished_at)}{worker}"
        )
        if s.child_id:
            click.echo(f"        child saga: {s.child_id}")
        if s.error:
            click.echo(f"        error: {s.error}")
        if s.compensation_task_name and s.comp_attempt:
            click.echo(
                f"        compensation {s.compensation_task_name}: "
                f"{s.comp_attempt} attempt(s), "
                f"{_took(s.comp_started_at, s.comp_finished_at)}"
                + (f", {s.comp_error}" if s.comp_error else "")
            )


def _header(ex: SagaExecution) -> None:
    click.echo(f"saga {ex.saga_id}  {ex.saga_name}  {ex.status.value.upper()}")
    click.echo(
        f"  created {_when(ex.created_at)}  updated {_when(ex.updated_at)}  "
        f"finished {_when(ex.finished_at)}"
    )
    if ex.parent_id:
        click.echo(f"  parent: {ex.parent_id} step {ex.parent_step}")
    if ex.idempotency_key:
        click.echo(f"  idempotency key: {ex.idempotency_key}")
    if ex.revert_reason:
        click.echo(f"  revert reason: {ex.revert_reason}")
    if ex.error:
        click.echo(f"  error: {ex.error}")


def _follow(ctx: click.Context, saga_id: str, interval: float) -> NoReturn:
    """Follow the execution to its end; exits with 0 (COMPLETED), 1, 3 or 130."""
    store = _store(ctx)

    def read() -> SagaExecution | None:
        try:
            return store.get(saga_id)
        except StoreNotFound as exc:
            _not_found(store, exc)
        except Exception as exc:  # one clear line, never a traceback
            _fail(read_error(saga_id, exc), EXIT_UNREADABLE)

    try:
        ended = follow(read, click.echo, interval)
    except KeyboardInterrupt:
        click.echo(f"interrupted: stopped following saga {saga_id} (it goes on)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if ended is None:
        _fail(f"no saga {saga_id} in {store!r}", EXIT_NOT_FOUND)
    sys.exit(EXIT_OK if ended.status is SagaStatus.COMPLETED else EXIT_REFUSED)


@saga.command()
@click.argument("target", metavar="NAME|ID")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(_RENDERERS)),
    default="mermaid",
    show_default=True,
)
@click.pass_context
def graph(ctx: click.Context, target: str, fmt: str) -> None:
    """Draw a saga: NAME, one the app (-A) defines, or ID, an execution in the store.

    A definition shows its stages, parallel groups, conditions, child sagas, external
    steps and compensations (dashed, back up); an execution is coloured by status.
    """
    try:
        saga_id: str | None = validate_saga_id(target)
    except InvalidSagaId:
        saga_id = None
    if saga_id is not None:
        drawn = execution_graph(_load(ctx, saga_id))
    else:
        app = _app(ctx)
        try:
            found = registry.lookup(target, app)
        except SagaNotRegistered:
            names = sorted(n for n, s in registry.registered().items() if s.app is app)
            _fail(
                f"{target!r} is neither a saga defined on the app nor a saga id. Sagas "
                f"defined on the app: {', '.join(names) or 'none'}; give -A the module that "
                "defines the saga, or an execution's id (`celery saga list`).",
                EXIT_NOT_FOUND,
            )
        except SagaError as exc:  # two sagas under one name
            _fail(str(exc), EXIT_REFUSED)
        try:
            drawn = definition_graph(found.definition)
        except SagaError as exc:
            _fail(str(exc), EXIT_REFUSED)
    click.echo(_RENDERERS[fmt](drawn), nl=False)
