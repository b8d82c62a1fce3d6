"""The listing indexes' scores: an execution's creation time in whole microseconds.

An integer score is stored as an integer in a small sorted set (a listpack), so
inserting an entry compares integers; a float score, such as created_at in seconds,
is stored as text and parsed again at every entry an insert walks past. The layout
before this one scored entries in seconds: any score below `FLOOR` is one of those
(a creation time in microseconds is above it from 1970-01-12 on), and `Indexes`
rescores them before it reads an index.
"""

from __future__ import annotations

import math

#: Microseconds per second.
SCALE = 1_000_000
#: Scores below this are creation times in seconds (the layout before this one).
FLOOR = 10**12


def score(created_at: float) -> int:
    """The index score of an execution created at `created_at` (epoch seconds).

    The scripts compute the same from the stored created_at with `LUA`, the same double
    arithmetic, so both sides agree to the unit.
    """
    return max(math.floor(created_at * SCALE + 0.5), FLOOR)


#: `score` in Lua, for the scripts that score entries themselves: ``index_score(t)``
#: takes seconds (a number or its text) and returns the score as integer text.
LUA = f"""
local function index_score(seconds)
  local us = math.max(math.floor(tonumber(seconds) * {SCALE} + 0.5), {FLOOR})
  return string.format('%d', us)
end
"""
