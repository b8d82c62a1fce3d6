"""What every handler of one web app shares: the store, the Celery app, settings, templates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from celery_saga_web.security import CSRF_COOKIE, Guard

if TYPE_CHECKING:
    from celery import Celery

    from celery_saga.backends.base import SagaBackend


@dataclass
class WebState:
    """The web app's configuration, kept on ``app.state.web``."""

    store: SagaBackend
    celery_app: Celery | None
    allow_actions: bool
    guard: Guard
    templates: jinja2.Environment
    #: Seconds between reloads of a page that shows an unfinished saga.
    refresh_seconds: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def page(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status_code: int = 200,
        forms: bool = False,
    ) -> HTMLResponse:
        """Render `template`; with `forms`, give the page a CSRF cookie and form token."""
        cookie = request.cookies.get(CSRF_COOKIE) if forms else None
        fresh = forms and not cookie
        if fresh:
            cookie = self.guard.new_cookie()
        values = {
            "request": request,
            "allow_actions": self.allow_actions,
            "csrf_token": self.guard.form_token(cookie) if cookie else "",
            "refresh_seconds": self.refresh_seconds,
            **context,
        }
        body = self.templates.get_template(template).render(values)
        response = HTMLResponse(body, status_code=status_code)
        if fresh and cookie:
            response.set_cookie(
                CSRF_COOKIE,
                cookie,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
        return response


def web_state(request: Request) -> WebState:
    """The `WebState` of the app serving `request`."""
    found: WebState = request.app.state.web
    return found
