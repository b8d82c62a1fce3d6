"""Operator actions (POST): retry, resolve, cancel, revert, complete or fail an external step.

Served only when the app was made with ``allow_actions`` (404 otherwise). Each needs
the operator token and the CSRF token (403, nothing changed, otherwise) and goes
through the same runtime entry points as ``celery saga retry/resolve/cancel/revert/
complete/fail``; the saga must be defined in this process (``-A``), as for the CLI.
Success redirects (303) to the execution page; an action that does not apply to the
saga as it is now is a 409 that says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from celery_saga import registry
from celery_saga.errors import SagaError, StepOutputError
from celery_saga.models import SagaExecution
from celery_saga_web.pages import load, saga_id_of
from celery_saga_web.state import WebState, web_state

if TYPE_CHECKING:
    from celery_saga.runtime.binding import Runtime

#: The largest form accepted (an external step's output is in it).
MAX_FORM = 1_048_576
#: The most fields a form may have.
MAX_FIELDS = 20
#: The longest note, reason or error text accepted.
MAX_TEXT = 4096


def _refused(status: int, message: str) -> HTTPException:
    return HTTPException(status, message)


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body, size-limited (413), strictly decoded (400), last value wins."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise _refused(415, f"send the form as application/x-www-form-urlencoded, not {kind!r}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise _refused(413, f"the form is larger than {MAX_FORM} bytes")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refused(400, f"the form cannot be read: {exc}") from None
    return dict(pairs)


def _text(form: dict[str, str], key: str, what: str, *, required: bool = False) -> str | None:
    value = form.get(key, "").strip()
    if len(value) > MAX_TEXT:
        raise _refused(400, f"{what} is longer than {MAX_TEXT} characters")
    if required and not value:
        raise _refused(400, f"{what} is required")
    return value or None


def _runtime(web: WebState, execution: SagaExecution) -> Runtime:
    from celery_saga.runtime.binding import Runtime

    try:
        saga = registry.lookup(execution.saga_name, web.celery_app)
    except SagaError as exc:
        raise _refused(
            409,
            f"{exc}. Start the web view with -A pointing at the module that defines the saga "
            "to act on it.",
        ) from None
    return Runtime.of(saga)


def _retry(web: WebState, ex: SagaExecution, form: dict[str, str]) -> None:
    from celery_saga.runtime.operator import retry_compensations

    if not retry_compensations(_runtime(web, ex), ex.saga_id):
        raise _refused(409, f"saga {ex.saga_id} is {ex.status.value}: nothing to retry")


def _cancel(web: WebState, ex: SagaExecution, form: dict[str, str]) -> None:
    from celery_saga.runtime.compensation import cancel

    reason = _text(form, "reason", "the reason")
    if not cancel(_runtime(web, ex), ex.saga_id, reason):
        raise _refused(
            409, f"saga {ex.saga_id} is {ex.status.value}: only running sagas can be cancelled"
        )


def _revert(web: WebState, ex: SagaExecution, form: dict[str, str]) -> None:
    from celery_saga.runtime.operator import revert

    reason = _text(form, "reason", "the reason")
    try:
        revert(_runtime(web, ex), ex.saga_id, reason)
    except SagaError as exc:
        raise _refused(409, str(exc)) from None


def _resolve(web: WebState, ex: SagaExecution, form: dict[str, str]) -> None:
    from celery_saga.runtime.operator import resolve_compensation

    text = form.get("step", "").strip()
    if not text.isdigit() or int(text) >= len(ex.steps):
        raise _refused(
            400, f"step: {text[:20]!r} is not a step of saga {ex.saga_id} (0..{len(ex.steps) - 1})"
        )
    index = int(text)
    note = _text(form, "note", "the note (what was done by hand)", required=True)
    assert note is not None
    if not resolve_compensation(_runtime(web, ex), ex.saga_id, index, note):
        raise _refused(
            409,
            f"step {index} of saga {ex.saga_id} is {ex.step(index).status.value}, not "
            "compensation_failed",
        )


def _settle(web: WebState, ex: SagaExecution, form: dict[str, str], *, failing: bool) -> None:
    from celery_saga.runtime.external import settle

    step = _text(form, "step", "the external step's name", required=True)
    assert step is not None
    output: Any = None
    error = None
    if failing:
        error = _text(form, "error", "the error") or "failed from outside"
    else:
        try:
            output = json.loads(form.get("output", "").strip() or "{}")
        except ValueError as exc:
            raise _refused(
                400, f"output is not JSON ({exc}): give an object such as {{}}"
            ) from None
        if not isinstance(output, dict):
            raise _refused(400, f"output must be a JSON object, got {type(output).__name__}")
    rt = _runtime(web, ex)
    try:
        done = settle(rt, ex.saga_id, step, output=output, error=error)
    except StepOutputError as exc:
        raise _refused(400, str(exc)) from None
    except SagaError as exc:  # no external step of that name
        raise _refused(400, str(exc)) from None
    if not done.applied:
        raise _refused(409, f"saga {ex.saga_id}: refused: {done.reason}")


def _complete(web: WebState, ex: SagaExecution, form: dict[str, str]) -> None:
    _settle(web, ex, form, failing=False)


def _fail(web: WebState, ex: SagaExecution, form: dict[str, str]) -> None:
    _settle(web, ex, form, failing=True)


ACTIONS: dict[str, Callable[[WebState, SagaExecution, dict[str, str]], None]] = {
    "retry": _retry,
    "cancel": _cancel,
    "revert": _revert,
    "resolve": _resolve,
    "complete": _complete,
    "fail": _fail,
}


async def act(request: Request) -> Response:
    """``POST /sagas/{id}/{action}``: check token and CSRF, then do the action."""
    web = web_state(request)
    name = request.path_params["action"]
    action = ACTIONS.get(name)
    if action is None:
        raise HTTPException(404, f"no action {name[:40]!r}; actions: {', '.join(ACTIONS)}")
    form = await read_form(request)
    why = web.guard.refusal(request, form)
    if why is not None:
        raise _refused(403, f"refused, nothing was changed: {why}")
    saga_id = saga_id_of(request)

    def run() -> None:
        action(web, load(request, saga_id), form)

    await run_in_threadpool(run)
    return RedirectResponse(f"/sagas/{saga_id}?done={name}", status_code=303)
