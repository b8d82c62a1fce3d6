"""Several listing indexes read as one, newest first: the merge step of `Indexes.page`.

A listing without a status reads the index of each status (of each status of its saga
name, when it has one) instead of an index of every execution, so a create writes two
entries fewer. Each index is read a chunk at a time, newest first; `safe` says which of
the rows read so far no unread row can come before, so a page is exact whatever the
indexes hold.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: An index entry as a listing reads it: (saga id, score).
Row = tuple[str, float]


def order(row: Row) -> tuple[float, str]:
    """A row's place in a listing (ZREVRANGEBYSCORE's: score, then id, both descending)."""
    return row[1], row[0]


def safe(buffers: Mapping[str, list[Row]], more: Collection[str]) -> list[tuple[str, Row]]:
    """Take out of `buffers` (each index's rows read and not yet listed, newest first) the
    rows that come before every unread one, newest first, each with its index.

    An index in `more` has unread rows, all after its last row read: a row is safe when
    it is at or before the last row read of each of those. An index in `more` whose
    buffer is empty must be read first: nothing is safe until it is.
    """
    bound: tuple[float, str] | None = None
    for index in more:
        rows = buffers[index]
        if not rows:
            return []
        last = order(rows[-1])
        bound = last if bound is None or last > bound else bound
    taken: list[tuple[str, Row]] = []
    for index, rows in buffers.items():
        keep = 0
        while keep < len(rows) and (bound is None or order(rows[keep]) >= bound):
            taken.append((index, rows[keep]))
            keep += 1
        del rows[:keep]
    taken.sort(key=lambda item: order(item[1]), reverse=True)
    return taken
