"""The list page's filters, read from the query string and checked before any store call.

Anything that is not a filter the store can take is refused here with a 400 that
says what was wrong: an unknown status, a malformed duration, parent id or cursor,
a name with control characters. A store never sees a value it could choke on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import click
from starlette.exceptions import HTTPException

from celery_saga.backends.helpers import decode_cursor
from celery_saga.cli.commands import parse_duration
from celery_saga.errors import InvalidSagaId
from celery_saga.ids import validate_saga_id
from celery_saga.models import SagaStatus

#: The page size, and the largest one a page may ask for.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: The longest saga name accepted as a filter.
MAX_NAME = 255
#: Ages beyond this (about 100 years) are refused rather than passed on as huge numbers.
MAX_AGE = 100 * 365 * 86400.0
#: The longest cursor accepted (the stores' cursors are far shorter).
MAX_CURSOR = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")


def bad_request(message: str) -> HTTPException:
    """A 400 whose detail is shown on the error page."""
    return HTTPException(400, message)


@dataclass(frozen=True)
class ListQuery:
    """The filters of one list page, as given (text) and as the store takes them."""

    status: str | None = None
    name: str | None = None
    newer: str | None = None
    older: str | None = None
    parent: str | None = None
    cursor: str | None = None
    limit: int = PAGE_SIZE

    def store_arguments(self, now: float) -> dict[str, Any]:
        """Keyword arguments for `SagaBackend.list` (parent only when given)."""
        args: dict[str, Any] = {
            "status": self.status,
            "name": self.name,
            "limit": self.limit,
            "cursor": self.cursor,
            "created_after": None if self.newer is None else now - _age(self.newer, "newer"),
            "created_before": None if self.older is None else now - _age(self.older, "older"),
        }
        if self.parent is not None:
            args["parent_id"] = self.parent
        return args

    def link(self, **changes: str | int | None) -> str:
        """The query string of this page with `changes` (None drops a parameter)."""
        values: dict[str, Any] = {
            "status": self.status,
            "name": self.name,
            "newer": self.newer,
            "older": self.older,
            "parent": self.parent,
            "cursor": self.cursor,
            "limit": None if self.limit == PAGE_SIZE else self.limit,
        }
        values.update(changes)
        kept = {key: value for key, value in values.items() if value is not None}
        return "?" + urlencode(kept) if kept else "?"

    @property
    def filtered(self) -> bool:
        """True when any filter is set (the page then offers to clear them)."""
        return any(v is not None for v in (self.status, self.name, self.newer, self.older))


def _age(text: str, field: str) -> float:
    try:
        seconds = parse_duration(text)
    except click.BadParameter as exc:
        raise bad_request(f"{field}: {exc.message}") from None
    if not math.isfinite(seconds) or seconds > MAX_AGE:
        raise bad_request(f"{field}: {text!r} is longer than 100 years: give a shorter age")
    return seconds


def _one(params: Mapping[str, str], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    value = value.strip()
    return value or None


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """Read and check the list page's filters; `HTTPException(400)` says what is wrong."""
    status = _one(params, "status")
    if status is not None:
        status = status.lower()
        if status not in {s.value for s in SagaStatus}:
            choices = ", ".join(s.value for s in SagaStatus)
            raise bad_request(f"status: unknown saga status {status!r}; use one of: {choices}")
    name = _one(params, "name")
    if name is not None and (len(name) > MAX_NAME or _CONTROL.search(name)):
        raise bad_request(
            f"name: a saga name is at most {MAX_NAME} characters without control characters"
        )
    newer, older = _one(params, "newer"), _one(params, "older")
    for field, text in (("newer", newer), ("older", older)):
        if text is not None:
            _age(text, field)
    parent = _one(params, "parent")
    if parent is not None:
        try:
            parent = validate_saga_id(parent)
        except InvalidSagaId as exc:
            raise bad_request(f"parent: {exc}") from None
    cursor = _one(params, "cursor")
    if cursor is not None:
        check_cursor(cursor)
    limit_text = _one(params, "limit")
    limit = PAGE_SIZE
    if limit_text is not None:
        digits = len(limit_text) <= 4 and limit_text.isdigit()
        if not digits or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
            raise bad_request(
                f"limit: {limit_text[:20]!r} is not a page size; use 1 to {MAX_PAGE_SIZE}"
            )
        limit = int(limit_text)
    return ListQuery(status, name, newer, older, parent, cursor, limit)


def check_cursor(cursor: str) -> None:
    """Refuse a cursor the stores did not make (they share core's cursor format)."""
    problem = None
    if len(cursor) > MAX_CURSOR or not _CURSOR.fullmatch(cursor):
        problem = "it is not a cursor of this view"
    else:
        try:
            created_at, saga_id = decode_cursor(cursor)
            validate_saga_id(saga_id)
            if not math.isfinite(created_at):
                problem = "its position is not a time"
        except (ValueError, InvalidSagaId):
            problem = "it is not a cursor of this view"
    if problem is not None:
        raise bad_request(
            f"cursor: {problem}; follow the 'next page' link, or start again from the first page"
        )
