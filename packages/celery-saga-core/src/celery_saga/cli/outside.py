"""``celery saga complete / fail / revert``: outcomes and reverts asked for from outside.

They need the saga's definition (run with ``-A`` pointing at the module that defines
it) because what they record moves the saga on from this process.
"""

from __future__ import annotations

import json
from typing import Any

import click

from celery_saga.cli.commands import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_USAGE,
    SagaId,
    _fail,
    _load,
    _runtime,
    saga,
)
from celery_saga.errors import SagaError, StepOutputError


def _settle(ctx: click.Context, saga_id: str, step: str, output: Any, error: str | None) -> None:
    from celery_saga.runtime.external import settle

    ex = _load(ctx, saga_id)
    rt = _runtime(ctx, ex)
    try:
        done = settle(rt, saga_id, step, output=output, error=error)
    except StepOutputError as exc:
        _fail(str(exc), EXIT_USAGE)
    except SagaError as exc:  # no such external step
        _fail(str(exc), EXIT_NOT_FOUND)
    if not done.applied:
        _fail(f"saga {saga_id}: refused: {done.reason}", EXIT_REFUSED)
    click.echo(f"saga {saga_id}: {done.reason}")


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.argument("step")
@click.option(
    "--output",
    default="{}",
    show_default=True,
    metavar="JSON",
    help="The step's output: a JSON object, merged into the saga context.",
)
@click.pass_context
def complete(ctx: click.Context, saga_id: str, step: str, output: str) -> None:
    """Complete the external step STEP of a waiting saga (exit 1 if it is not waiting)."""
    try:
        value = json.loads(output)
    except ValueError as exc:
        _fail(
            f"--output is not JSON ({exc}): give an object such as '{{\"paid\": true}}'", EXIT_USAGE
        )
    if not isinstance(value, dict):
        _fail(f"--output must be a JSON object, got {type(value).__name__}", EXIT_USAGE)
    _settle(ctx, saga_id, step, value, None)


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.argument("step")
@click.option("--error", default="failed from outside", show_default=True, help="Recorded.")
@click.pass_context
def fail(ctx: click.Context, saga_id: str, step: str, error: str) -> None:
    """Fail the external step STEP of a waiting saga: the saga compensates."""
    _settle(ctx, saga_id, step, None, error)


@saga.command()
@click.argument("saga_id", type=SagaId())
@click.option("--reason", default=None, help="Recorded with the revert.")
@click.pass_context
def revert(ctx: click.Context, saga_id: str, reason: str | None) -> None:
    """Revert a COMPLETED saga: compensate its steps in reverse order; it ends REVERTED."""
    from celery_saga.runtime.operator import revert as revert_saga

    ex = _load(ctx, saga_id)
    try:
        revert_saga(_runtime(ctx, ex), saga_id, reason)
    except SagaError as exc:
        _fail(str(exc), EXIT_REFUSED)
    click.echo(f"saga {saga_id}: reverting")
