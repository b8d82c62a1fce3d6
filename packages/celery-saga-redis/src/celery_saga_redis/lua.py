"""The Lua the store's scripts are built from: functions each script defines for itself.

The hash layout is layout.py's. A step write is one HMGET of what its conditions need
(the saga status, the step's object and lease, the counter) and one HSET: the step's
object with its head rewritten and the client's members appended, the counter, the
lease fields. Step state is read from the object's head with one anchored pattern;
scripts never decode a step or re-encode what a client wrote: Lua's cjson keeps 14
significant digits, so it would round big numbers in user data and times that must
compare exactly, such as a lease's expiry. Counters live in a hash of their own
(`Keys.counters`), which the write that finishes the execution deletes.

What only the rare paths need (a step stored by the layout before this one, lease
conditions) is defined by `RARE`'s ``rare()`` on first use, so the step script's every
call does not create those functions. Such objects are cut into members by a small
scanner, not by cjson.

``s:<i>:l`` (a step's late successes) is raw JSON of a particular shape, so
`step_scripts.RECORD_LATE` can merge entries with cjson without rounding anything:
``{"<attempt>": {"<key>": "<JSON text>"}}``, every value of an entry kept as the JSON
text of the value.
"""

from __future__ import annotations

import json

from celery_saga.models import TERMINAL_STATUSES
from celery_saga_redis import layout


def _lua_string(text: str) -> str:
    """A Lua string literal (JSON's escapes are valid Lua escapes for these texts)."""
    return json.dumps(text)


def _lua_table(entries: dict[str, str]) -> str:
    return "{" + ", ".join(f"[{_lua_string(k)}] = {v}" for k, v in entries.items()) + "}"


#: The finished statuses, keyed by their JSON text (taken from `TERMINAL_STATUSES`, so a
#: status the model adds, such as REVERTED, expires, announces and deletes like the others).
TERMINAL = (
    "local TERMINAL = "
    + _lua_table({json.dumps(s.value): "true" for s in sorted(TERMINAL_STATUSES)})
    + "\n"
)

# The globals the hot scripts use, as locals of their chunk: a global is a table lookup
# at every use, a local (or its upvalue in a function) is not.
LOCALS = (
    "local KEYS, ARGV, redis, string, tonumber, unpack = "
    "KEYS, ARGV, redis, string, tonumber, unpack\n"
)

# The name of the extras flag field (`layout.EXTRAS`), for the scripts that read or set it.
EXTRAS = "local EXTRAS = " + _lua_string(layout.EXTRAS) + "\n"

# Whether a status name is one of a space-separated list of names ('': any).
ALLOWED = """
local function allowed(list, name)
  if list == '' then return true end
  return string.find(' ' .. list .. ' ', ' ' .. name .. ' ', 1, true) ~= nil
end
"""

# Scanning JSON text: the end of a string (the step scripts' every write may need it).
STRING = """
-- The index just past the JSON string whose opening quote is at pos.
local function after_string(text, pos)
  local i = pos + 1
  while true do
    local j = string.find(text, '["\\\\]', i)
    if not j then return #text + 1 end
    if string.byte(text, j) == 92 then i = j + 2 else return j + 1 end
  end
end

"""

# A step object's head (its state): what the step scripts' conditions read.
HEAD = """
-- The state at the head of a step object: status (a name), attempt, comp_attempt,
-- and the index of the head's last character; nil for an object without a head.
local function head(object)
  local _, stop, s, a = string.find(object, '^{"s":"([%l_]+)","a":(%d+)')
  if not s then return nil end
  local _, last, ca = string.find(object, '^,"ca":(%d+)', stop + 1)
  if ca then return s, tonumber(a), tonumber(ca), last end
  return s, tonumber(a), 0, stop
end
"""

# A step object's rewrite: every step write's.
REWRITE = """
-- `object` (whose head ends at `stop`) with a new head and `added` members appended.
-- `starts`: the starts of the members in `added` and of those set to null (`,"<code>":`,
-- space separated), `nulls`: the codes set to null. In an object that holds no object
-- or array, where such a start can only start a member, the earlier members of those
-- codes are cut (absent is null); in any other, a null is appended for each code of
-- `nulls` that it may hold.
local function rewrite(object, stop, s, a, ca, added, starts, nulls)
  if not (string.find(object, '{', 2, true) or string.find(object, '[', 2, true)) then
    for start in string.gmatch(starts, '%S+') do
      local from = string.find(object, start, stop, true)
      while from do
        local value = from + #start
        local after = string.find(object, '[,}]', value)
        if string.byte(object, value) == 34 then after = after_string(object, value) end
        object = string.sub(object, 1, from - 1) .. string.sub(object, after)
        from = string.find(object, start, from, true)
      end
    end
  elseif nulls ~= '' then
    for key in string.gmatch(nulls, '%S+') do
      if string.find(object, '"' .. key .. '":', stop, true) then
        added = added .. ',"' .. key .. '":null'
      end
    end
  end
  local new = '{"s":"' .. s .. '","a":' .. a
  if ca ~= 0 then new = new .. ',"ca":' .. ca end
  if added == '' then return new .. string.sub(object, stop + 1) end
  return new .. string.sub(object, stop + 1, -2) .. added .. '}'
end
"""

# The fast step write's (`step_scripts.STEP_FAST`): whether a step object has a given
# head, and the object with a new head and members added.
FAST = """
-- Whether `object` has the head `expected` (``{"s":"<status>","a":<attempt>``, with no
-- comp_attempt): its text starts so, and the head ends there.
local function fits(object, expected)
  if not object or string.find(object, expected, 1, true) ~= 1 then return false end
  local c, _, d, e = string.byte(object, #expected + 1, #expected + 4)
  return c == 125 or (c == 44 and not (d == 99 and e == 97))
end

-- `object` (whose head is `n` long) with the head `new` and the members `back` appended.
-- `sa`: a started_at member written (or ''), put right after the head, where a step's
-- start puts it, in place of the one there; appended instead when the object has one
-- elsewhere (so that it counts: the last one does, see `layout`). `null`: the start of
-- a member set to null (``,"<code>":``, or ''), a null appended when the object may
-- have one.
local function append(object, n, new, sa, back, null)
  local rest = n + 1
  if sa ~= '' then
    local at = string.find(object, ',"sa":', rest, true)
    if at == rest then
      rest = string.find(object, ',', rest + 6, true) or #object
      new = new .. sa
    elseif at then
      back = sa .. back
    else
      new = new .. sa
    end
  end
  if null ~= '' and string.find(object, null, rest, true) then back = back .. null .. 'null' end
  if back == '' then return new .. string.sub(object, rest) end
  return new .. string.sub(object, rest, -2) .. back .. '}'
end
"""

# The rare paths' functions, defined on first use: converting a step stored by the layout
# before this one (cutting its object into members without decoding their values), and
# lease conditions. Each call of a script that never needs them creates none of them.
RARE = (
    """
local rare_functions = nil
local function rare()
  if rare_functions then return rare_functions end
  local k = {
    code = """
    + _lua_table({name: _lua_string(code) for name, code in layout.STEP_CODES.items()})
    + """,
    apart = """
    + _lua_table(dict.fromkeys(layout.APART, "true"))
    + """,
    legacy = {"""
    + ", ".join(_lua_string(name) for name in layout.LEGACY_RAW_FIELDS)
    + """},
  }

  -- The index just past the JSON value that starts at pos.
  local function after_value(text, pos)
    local c = string.byte(text, pos)
    if c == 34 then return after_string(text, pos) end
    if c == 123 or c == 91 then
      local depth, i = 0, pos
      while true do
        local j = string.find(text, '[%[%]{}"]', i)
        if not j then return #text + 1 end
        local d = string.byte(text, j)
        if d == 34 then
          i = after_string(text, j)
        else
          if d == 123 or d == 91 then depth = depth + 1 else depth = depth - 1 end
          i = j + 1
          if depth == 0 then return i end
        end
      end
    end
    return string.find(text, '[,}%]%s]', pos) or (#text + 1)
  end

  -- The members of a step object of the layout before this one: code -> the raw text of
  -- the value as written.
  local function members(text)
    local code = k.code
    local out = {}
    local pos = (string.find(text, '{', 1, true) or #text) + 1
    while true do
      pos = string.find(text, '[^%s,]', pos)
      if not pos or string.byte(text, pos) ~= 34 then return out end
      local stop = after_string(text, pos)
      local key = string.sub(text, pos + 1, stop - 2)
      if string.find(key, '\\\\', 1, true) then
        key = cjson.decode(string.sub(text, pos, stop - 1))
      end
      pos = string.find(text, '[^%s:]', stop)
      if not pos then return out end
      stop = after_value(text, pos)
      out[code[key] or key] = string.sub(text, pos, stop - 1)
      pos = stop
    end
  end

  -- A step object stored by the layout before this one, rewritten in this one (its
  -- fields kept apart by that layout moved too); the new object.
  local function convert(h, i, object)
    local p = 's:' .. i
    local values = members(object)
    local names = {}
    for n, name in ipairs(k.legacy) do names[n] = p .. ':' .. name end
    local legacy = redis.call('HMGET', h, unpack(names))
    local gone = {}
    for n = 1, #names do
      if legacy[n] then
        values[k.code[k.legacy[n]]] = legacy[n]
        gone[#gone + 1] = names[n]
      end
    end
    if #gone > 0 then redis.call('HDEL', h, unpack(gone)) end
    local s = 'pending'
    if values['s'] then s = cjson.decode(values['s']) end
    local a, ca = tonumber(values['a'] or 0), tonumber(values['ca'] or 0)
    values['s'], values['a'], values['ca'], values['index'] = nil, nil, nil, nil
    local parts, sets = {}, {}
    for key, text in pairs(values) do
      if k.apart[key] then
        if text ~= 'null' then
          sets[#sets + 1] = p .. ':' .. key
          sets[#sets + 1] = text
        end
      elseif text ~= 'null' then
        parts[#parts + 1] = ',"' .. key .. '":' .. text
      end
    end
    local new = '{"s":"' .. s .. '","a":' .. a
    if ca ~= 0 then new = new .. ',"ca":' .. ca end
    new = new .. table.concat(parts) .. '}'
    redis.call('HSET', h, p, new, unpack(sets))
    return new
  end

  -- The lease conditions of a step write (ARGV only when the caller has some): the same
  -- rules as `StepExpect.refusal`. `owner` and `expires` are the stored raw JSON (false
  -- when absent); `spec` is JSON [lease_free_at, lease_holder, lease_owners], null for
  -- an absent condition, and null in lease_owners for "no owner".
  local function lease_ok(spec, owner, expires)
    spec = cjson.decode(spec)
    local held = nil
    if owner and owner ~= 'null' then held = cjson.decode(owner) end
    local free_at, owners = spec[1], spec[3]
    if free_at ~= cjson.null and held ~= nil and held ~= spec[2] then
      local till = nil
      if expires and expires ~= 'null' then till = tonumber(expires) end
      if till == nil or till > free_at then return false end
    end
    if owners ~= cjson.null then
      for _, o in ipairs(owners) do
        if (o == cjson.null and held == nil) or (o ~= cjson.null and o == held) then
          return true
        end
      end
      return false
    end
    return true
  end

  rare_functions = {convert = convert, lease_ok = lease_ok}
  return rare_functions
end
"""
)

STEP_STATE = """
-- Step i's object, its state and where its head ends, converting the step if need be
-- (`object`: the object as read, or false); nil: no step i.
local function step_state(h, i, object)
  if not object then
    object = redis.call('HGET', h, 's:' .. i)
    if not object then return nil end
  end
  local s, a, ca, stop = head(object)
  if not s then
    object = rare().convert(h, i, object)
    s, a, ca, stop = head(object)
  end
  return object, s, a, ca, stop
end
"""
