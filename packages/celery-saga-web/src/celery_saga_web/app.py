"""`create_app`: the Starlette application of the web view, for any saga store.

Read-only unless made with ``allow_actions=True`` (which needs a token). Its pages:
``/`` (executions), ``/sagas/{id}`` (one execution), ``/definitions``, ``/metrics``,
``/healthz``; with actions, ``POST /sagas/{id}/{action}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from celery_saga_web import actions, pages, styles
from celery_saga_web.metrics import metrics, metrics_registry
from celery_saga_web.render import environment
from celery_saga_web.security import SECURITY_HEADERS, Guard, SecurityHeaders
from celery_saga_web.state import WebState

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend

#: Paths answered in plain text, errors included (machines read them).
_PLAIN = ("/metrics", "/healthz")


def create_app(
    store: SagaBackend,
    *,
    celery_app: Celery | None = None,
    allow_actions: bool = False,
    token: str | None = None,
) -> Starlette:
    """The web view of `store`; `celery_app` gives the definitions and the settings.

    With `allow_actions`, operators may retry, resolve, cancel, revert and complete or
    fail external steps, each with `token` (required then) and a CSRF token.
    """
    if allow_actions and not token:
        raise ValueError(
            "allow_actions=True needs a token: operators must present it with each action "
            "(pass token=..., or --token / the saga_web_token setting on the command line)"
        )
    routes = [
        Route("/", pages.list_page, name="list"),
        Route("/sagas/{saga_id}", pages.execution_page, name="execution"),
        Route("/definitions", pages.definitions_page, name="definitions"),
        Route("/metrics", metrics, name="metrics"),
        Route("/healthz", pages.healthz, name="healthz"),
        Route("/static/web.css", styles.stylesheet, name="css"),
    ]
    if allow_actions:
        routes.append(Route("/sagas/{saga_id}/{action}", actions.act, methods=["POST"]))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.web = WebState(
        store=store,
        celery_app=celery_app,
        allow_actions=allow_actions,
        guard=Guard(token),
        templates=environment(),
    )
    app.state.metrics = metrics_registry(store, celery_app)
    return app


def _http_error(request: Request, exc: Any) -> Response:
    """An HTTP error as a page saying what was wrong (plain text for machine paths)."""
    assert isinstance(exc, HTTPException)
    status, detail = exc.status_code, str(exc.detail)
    if status == 404 and detail == "Not Found":  # no route: say what there is instead
        detail = f"there is no page at {request.url.path[:200]!r}: see the executions at /"
    headers = dict(exc.headers or {})
    if request.url.path in _PLAIN or "text/html" not in request.headers.get("accept", "text/html"):
        return PlainTextResponse(f"{status}: {detail}\n", status_code=status, headers=headers)
    web: WebState = request.app.state.web
    body = web.templates.get_template("error.html").render(
        request=request, status=status, detail=detail, allow_actions=web.allow_actions
    )
    return HTMLResponse(body, status_code=status, headers=headers)


def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: a short page (the traceback goes to the server's log), security headers on."""
    return PlainTextResponse(
        "500: internal error of the saga web view (see the server's log)\n",
        status_code=500,
        headers=dict(SECURITY_HEADERS),
    )
