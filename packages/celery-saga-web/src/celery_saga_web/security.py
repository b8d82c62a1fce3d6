"""Response headers, request limits, and what an operator action must show: token and CSRF.

Every response carries a Content-Security-Policy that allows no script at all (the
pages have none), `nosniff` and `X-Frame-Options: DENY`. A query string or path
over 4 KiB is refused with 414 before any route runs. An action needs the
operator token (``Authorization: Bearer`` or the form field ``token``) and a CSRF
token: a random cookie plus, in the form (or the ``X-CSRF-Token`` header), an HMAC of
that cookie under a secret of this app. Tokens are compared with
`secrets.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The longest query string (and path) accepted, in bytes.
MAX_QUERY = 4096
#: The CSRF cookie's name, and the form field / header carrying its signed twin.
CSRF_COOKIE = "saga_web_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
TOKEN_FIELD = "token"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """ASGI middleware: refuse oversized request lines (414), add the security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query, path = scope.get("query_string", b""), scope.get("path", "")
        if len(query) > MAX_QUERY or len(path) > MAX_QUERY:
            response = PlainTextResponse(
                f"414 URI too long: the query string and the path are limited to {MAX_QUERY} "
                "bytes each; use fewer or shorter filters",
                status_code=414,
                headers=dict(SECURITY_HEADERS),
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Guard:
    """Checks an action's operator token and CSRF token (both required)."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        self._secret = secrets.token_bytes(32)

    def form_token(self, cookie: str) -> str:
        """The CSRF form token that goes with the CSRF cookie `cookie`."""
        return hmac.new(self._secret, cookie.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_cookie() -> str:
        """A fresh CSRF cookie value."""
        return secrets.token_urlsafe(32)

    def refusal(self, request: Request, form: Mapping[str, str]) -> str | None:
        """Why `request` may not act (None: it may): no or wrong token, no or wrong CSRF."""
        if self._token is None:
            return "actions need an operator token, and this view has none"
        given = _bearer(request) or form.get(TOKEN_FIELD, "")
        if not given or not secrets.compare_digest(given.encode(), self._token.encode()):
            return "the operator token is missing or wrong"
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD, "")
        if not cookie or not sent:
            return "the CSRF token is missing: reload the page and submit its form again"
        if not secrets.compare_digest(sent.encode(), self.form_token(cookie).encode()):
            return "the CSRF token does not match: reload the page and submit its form again"
        return None


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""
