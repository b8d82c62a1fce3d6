"""Listing executions newest first: keyset pages on the (…, created_at, _id) indexes.

Every query is an equality (status, name, both, parent or none) plus one
``created_at`` range, sorted newest first, with a keyset cursor, never ``skip()``. A
listing first reads the span of creation times that filled the previous page of the
same listing (half as much again), and the rest of the range only if that was not
enough, so a server that reads every match before it sorts and limits (SecantusDB)
reads about a page, not the whole index; MongoDB answers either query from the index
in one round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection as MongoCollection

from celery_saga.backends.base import Page, StoreStats
from celery_saga.models import SagaSummary, now
from celery_saga_mongo.documents import SUMMARY_PROJECTION, summary_dict

_NEWEST_FIRST = [("created_at", -1), ("_id", -1)]
#: A listing first reads the span of creation times that filled its previous page,
#: times this slack, and the rest of the range only if that was not enough.
_SPAN_SLACK = 1.5
#: Shortest span a listing starts with (seconds).
_MIN_SPAN = 0.001
#: Listings (status, name, parent) whose span is remembered.
_SPANS_KEPT = 1024

#: A listing's key: (status, saga name, parent id).
ListingKey = tuple[str | None, str | None, str | None]


class Listing:
    """The pages of `MongoSagaBackend.list` from `executions` (round trips in `stats`)."""

    def __init__(self, executions: MongoCollection[dict[str, Any]], stats: StoreStats) -> None:
        self.executions = executions
        self.stats = stats
        #: listing -> seconds of creation time its last full page spanned.
        self._spans: dict[ListingKey, float] = {}

    def page(
        self,
        base: Mapping[str, Any],
        before: float | None,
        after: float | None,
        position: tuple[float, str] | None,
        limit: int,
    ) -> Page:
        """Up to `limit` summaries matching `base` (equalities), created after `after`
        and before `before` (exclusive), after the cursor's `position` if given."""
        # The newest end: created_before (exclusive), or the cursor's position when it
        # is older (inclusive: ties on created_at are split by _id in `_slice`).
        high: tuple[float, bool] | None = None if before is None else (before, False)
        split: tuple[float, str] | None = None
        if position is not None and (high is None or position[0] < high[0]):
            high, split = (position[0], True), position
        low = None if after is None else (after, False)
        want = limit + 1
        key: ListingKey = (base.get("status"), base.get("saga_name"), base.get("parent_id"))
        top = now() if high is None else high[0]
        span = self._spans.get(key)
        if span is not None and (after is None or after < top - span):
            # The span that filled the last page of this listing, newest first; the
            # rest of the range only if that was not enough.
            edge = top - span
            documents = self._slice(base, (edge, True), high, split, want)
            if len(documents) < want:
                documents += self._slice(base, low, (edge, False), None, want - len(documents))
        else:
            documents = self._slice(base, low, high, split, want)
        if len(documents) == want:
            self._learn_span(key, top - float(documents[-1]["created_at"]))
        return Page.of([SagaSummary.from_dict(summary_dict(d)) for d in documents], limit)

    def _slice(
        self,
        base: Mapping[str, Any],
        low: tuple[float, bool] | None,
        high: tuple[float, bool] | None,
        split: tuple[float, str] | None,
        want: int,
    ) -> list[dict[str, Any]]:
        """Up to `want` summaries newest first with `low` < created_at < `high`.

        Each bound is (value, inclusive). With `split`, documents at or after that
        (created_at, _id) position are left out: they share the bound's created_at,
        sort first, and are dropped here (asking again for more if they filled the
        batch), so the filter stays an equality plus one range, which every server
        serves from the (…, created_at, _id) indexes.
        """
        created: dict[str, float] = {}
        if low is not None:
            created["$gte" if low[1] else "$gt"] = low[0]
        if high is not None:
            # An inclusive bound as the exclusive bound just above it: some servers
            # (SecantusDB) compare the bound with the whole compound index key, so
            # ``$lte`` there would leave out the documents that sit exactly on it.
            created["$lt"] = math.nextafter(high[0], math.inf) if high[1] else high[0]
        query = dict(base)
        if created:
            query["created_at"] = created
        extra = 0
        while True:
            self.stats.add()
            documents = list(
                self.executions.find(
                    query, projection=SUMMARY_PROJECTION, sort=_NEWEST_FIRST, limit=want + extra
                )
            )
            if split is None:
                return documents
            kept = [d for d in documents if (d["created_at"], d["_id"]) < split]
            dropped = len(documents) - len(kept)
            if dropped <= extra or len(documents) < want + extra:
                return kept[:want]
            extra = dropped

    def _learn_span(self, key: ListingKey, needed: float) -> None:
        """Remember how far back a full page of this listing reached (with slack)."""
        if len(self._spans) >= _SPANS_KEPT:
            self._spans.clear()
        self._spans[key] = max(needed * _SPAN_SLACK, _MIN_SPAN)
