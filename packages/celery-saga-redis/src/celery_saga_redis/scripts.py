"""Lua scripts: each one atomic step on one execution hash (one cluster slot).

The hash layout is layout.py's. A step write is one HMGET of what its conditions need
(the saga status, the step's object and lease, the counter) and one HSET: the step's
object with its head rewritten and the client's members appended, the counter, the
lease fields. Step state is read from the object's head with one anchored pattern;
scripts never decode a step or re-encode what a client wrote: Lua's cjson keeps 14
significant digits, so it would round big numbers in user data and times that must
compare exactly, such as a lease's expiry. Counters live in a hash of their own
(`Keys.counters`), which the write that finishes the execution deletes.

What only the rare paths need (a step stored by the layout before this one, lease
conditions) is defined by `rare()` on first use (`_RARE`), so the step script's every
call does not create those functions. Such objects are cut into members by a small
scanner, not by cjson.

``s:<i>:l`` (a step's late successes) is raw JSON of a particular shape, so
`RECORD_LATE` can merge entries with cjson without rounding anything: ``{"<attempt>":
{"<key>": "<JSON text>"}}``, every value of an entry kept as the JSON text of the value.
"""

from __future__ import annotations

import json

from celery_saga.models import TERMINAL_STATUSES
from celery_saga_redis import layout, scores


def _lua_string(text: str) -> str:
    """A Lua string literal (JSON's escapes are valid Lua escapes for these texts)."""
    return json.dumps(text)


def _lua_table(entries: dict[str, str]) -> str:
    return "{" + ", ".join(f"[{_lua_string(k)}] = {v}" for k, v in entries.items()) + "}"


#: The finished statuses, keyed by their JSON text (taken from `TERMINAL_STATUSES`, so a
#: status the model adds, such as REVERTED, expires, announces and deletes like the others).
_TERMINAL = (
    "local TERMINAL = "
    + _lua_table({json.dumps(s.value): "true" for s in sorted(TERMINAL_STATUSES)})
    + "\n"
)

# The globals the hot scripts use, as locals of their chunk: a global is a table lookup
# at every use, a local (or its upvalue in a function) is not.
_LOCALS = (
    "local KEYS, ARGV, redis, string, tonumber, unpack = "
    "KEYS, ARGV, redis, string, tonumber, unpack\n"
)

# Whether a status name is one of a space-separated list of names ('': any).
_ALLOWED = """
local function allowed(list, name)
  if list == '' then return true end
  return string.find(' ' .. list .. ' ', ' ' .. name .. ' ', 1, true) ~= nil
end
"""

# Scanning JSON text: the end of a string (the step scripts' every write may need it).
_STRING = """
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

# A step object's head (its state) and its rewrite: the step scripts' every write.
_HEAD = """
-- The state at the head of a step object: status (a name), attempt, comp_attempt,
-- and the index of the head's last character; nil for an object without a head.
local function head(object)
  local _, stop, s, a = string.find(object, '^{"s":"([%l_]+)","a":(%d+)')
  if not s then return nil end
  local _, last, ca = string.find(object, '^,"ca":(%d+)', stop + 1)
  if ca then return s, tonumber(a), tonumber(ca), last end
  return s, tonumber(a), 0, stop
end

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

# The rare paths' functions, defined on first use: converting a step stored by the layout
# before this one (cutting its object into members without decoding their values), and
# lease conditions. Each call of a script that never needs them creates none of them.
_RARE = (
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

_STEP_STATE = """
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

# Cluster create, in three steps that each touch one slot: BEGIN_CREATE marks the
# execution as being created, the client indexes it, CREATE writes it and clears
# the mark. A reader that meets an index entry whose execution is missing removes
# the entry only when the mark is absent too (the execution is gone, not pending).
BEGIN_CREATE = """
-- KEYS[1] execution hash, KEYS[2] its 'creating' marker; ARGV[1] marker lifetime (s)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
return 1
"""

CREATE = """
-- KEYS[1] execution hash, KEYS[2] its 'creating' marker
-- ARGV: field, value, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('DEL', KEYS[2])
return 1
"""

# One key (any slot): claim an idempotency key, or take it over from an owner that
# is known to be gone. Returns the owner after the call.
CLAIM = """
-- KEYS[1] idempotency key; ARGV[1] claiming saga id, ARGV[2] owner it may replace
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[2] then return owner end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# One key (any slot, a cluster's idempotency key): give it the expiry of the execution
# it names, or take it away, unless it names another execution now.
FOLLOW = """
-- KEYS[1] key; ARGV[1] the saga id it must hold; ARGV[2] seconds (0: no expiry)
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('PERSIST', KEYS[1])
"""

# Standalone servers only (it touches index keys built here, outside KEYS): create
# the execution, claim its idempotency key and index it in one atomic step.
CREATE_INDEXED = """
-- KEYS[1] execution hash, KEYS[2] idempotency key (absent when none: an empty key
-- name would fall outside an ACL user's key patterns)
-- ARGV[1] index prefix, ARGV[2] saga name, ARGV[3] status, ARGV[4] index score,
-- ARGV[5] saga id, ARGV[6] an owner of the idempotency key known to be gone (''),
-- ARGV[7] the parent execution's id ('' for none: then no children index entry),
-- ARGV[8..] field, value pairs. Returns 1 (created), 0 (the id exists) or the owner.
local idem = KEYS[2]
if idem then
  local owner = redis.call('GET', idem)
  if owner and owner ~= ARGV[6] then return owner end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
if idem then redis.call('SET', idem, ARGV[5]) end
local ix = ARGV[1]
local indexes = {ix .. 'all', ix .. 'name:' .. ARGV[2], ix .. 'status:' .. ARGV[3],
                 ix .. 'name:' .. ARGV[2] .. ':status:' .. ARGV[3]}
if ARGV[7] ~= '' then indexes[#indexes + 1] = ix .. 'parent:' .. ARGV[7] end
for _, key in ipairs(indexes) do
  redis.call('ZADD', key, ARGV[4], ARGV[5])
end
redis.call('SADD', ix .. 'names', ARGV[2])
return 1
"""

# The step write (UPDATE_STEP's code after `_ALLOWED`), with a place for the saga's end.
_STEP_WRITE = (
    _STRING
    + _HEAD
    + _RARE
    + _STEP_STATE
    + """
-- KEYS[1] execution hash, KEYS[2] its counters
-- ARGV[1] step index, ARGV[2] now (updated_at, JSON), ARGV[3] allowed step statuses
-- (space separated names, '' any), ARGV[4] attempt ==, ARGV[5] attempt <=,
-- ARGV[6] allowed saga statuses, ARGV[7] comp_attempt ==, ARGV[8] comp_attempt <=
-- ('' for no condition), ARGV[9] counter to bump ('' none; the count becomes the
-- step's seq), ARGV[10] act when the counter reaches this value
-- ('' never): return the whole hash (unless prefixed with '!': the caller needs only
-- the started steps), ARGV[11] steps that must be SUCCESS (after this write) and
-- ARGV[12] steps to start (space separated, '' none): when the counter reaches
-- ARGV[10] and the saga is running, every start step still pending at attempt 0 gets
-- its changes (the next stage starts), ARGV[13] lease conditions ('' none; lease_ok),
-- ARGV[14] n: the last n ARGV are UPDATE_SAGA's ARGV, the saga's end, applied by
-- FINISH_STEP once the step's write applied (0 or '' none; only without steps to start),
-- ARGV[15..] the step's write (layout.StepChanges.args): new status, attempt and
-- comp_attempt ('' each: unchanged), n and n (hash field, JSON text) pairs of fields
-- apart, fields apart deleted (space separated), members to append, the starts of
-- those and of the members set to null, codes set to null; then the same for each
-- start step, in the order of ARGV[12].
-- A stage of this step alone (ARGV[11] is this step, ARGV[10] is 1) counts without its
-- counter: its one member's count is 1 (`layout` says why). A next stage of one step is
-- read with this step.
-- Returns {applied, step status, attempt, comp_attempt, saga status (names), lease
-- owner, lease expiry (raw JSON or nil), as stored before the write, count, the
-- whole hash, started steps, 1 if the saga's end applied (FINISH_STEP) else 0}.
local h, i = KEYS[1], ARGV[1]
local p = 's:' .. i
local counter = ARGV[9]
local at, read = ARGV[10], true
if string.byte(at, 1) == 33 then at, read = string.sub(at, 2), false end
local alone = at == '1' and ARGV[11] == i
local nxt = false
if alone and ARGV[12] ~= '' and not string.find(ARGV[12], ' ', 1, true) then
  nxt = 's:' .. ARGV[12]
end
local got
if nxt then
  got = redis.call('HMGET', h, 'h:status', p, p .. ':lo', p .. ':le', nxt)
else
  got = redis.call('HMGET', h, 'h:status', p, p .. ':lo', p .. ':le')
end
if not got[1] then return redis.error_reply('NOSAGA') end
local saga = string.sub(got[1], 2, -2)
local object = got[2]
local status, attempt, comp, stop = head(object or '')
if not status then
  object, status, attempt, comp, stop = step_state(h, i, got[2])
  if not object then return redis.error_reply('NOSTEP') end
  got = redis.call('HMGET', h, 'h:status', p, p .. ':lo', p .. ':le')
end
local owner, expires = got[3], got[4]
local ok = allowed(ARGV[3], status) and allowed(ARGV[6], saga)
if ok and ARGV[4] ~= '' and attempt ~= tonumber(ARGV[4]) then ok = false end
if ok and ARGV[5] ~= '' and attempt > tonumber(ARGV[5]) then ok = false end
if ok and ARGV[7] ~= '' and comp ~= tonumber(ARGV[7]) then ok = false end
if ok and ARGV[8] ~= '' and comp > tonumber(ARGV[8]) then ok = false end
if ok and ARGV[13] ~= '' then ok = rare().lease_ok(ARGV[13], owner, expires) end
if not ok then return {0, status, attempt, comp, saga, owner, expires} end
local sets, deleted = {'h:updated_at', ARGV[2]}, {}

-- One step's block of ARGV at `pos` applied to its object; the position after it. A new
-- attempt and the count `q` go into the object as text (no number formatting).
local function write(j, jobject, js, ja, jc, jstop, pos, q)
  if ARGV[pos] ~= '' then js = ARGV[pos] end
  if ARGV[pos + 1] ~= '' then ja = ARGV[pos + 1] end
  if ARGV[pos + 2] ~= '' then jc = tonumber(ARGV[pos + 2]) end
  local n = tonumber(ARGV[pos + 3])
  for k = pos + 4, pos + 3 + 2 * n, 2 do
    sets[#sets + 1] = ARGV[k]
    sets[#sets + 1] = ARGV[k + 1]
  end
  pos = pos + 4 + 2 * n
  if ARGV[pos] ~= '' then
    for f in string.gmatch(ARGV[pos], '%S+') do deleted[#deleted + 1] = f end
  end
  local added, starts = ARGV[pos + 1], ARGV[pos + 2]
  if q then
    added = added .. ',"q":' .. q
    starts = starts .. ' ,"q":'
  end
  sets[#sets + 1] = 's:' .. j
  sets[#sets + 1] = rewrite(jobject, jstop, js, ja, jc, added, starts, ARGV[pos + 3])
  return pos + 4, js
end

local count, q = false, false
if counter ~= '' and alone then
  count, q = 1, '1'
elseif counter ~= '' then
  count = redis.call('HINCRBY', KEYS[2], counter, 1)
  q = count
  if saga ~= 'running' and saga ~= 'compensating' and saga ~= 'pending' then
    -- Counted after the finish deleted the counters: they go with the execution.
    local ttl = redis.call('PTTL', h)
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  end
end
local pos, now_status = write(i, object, status, attempt, comp, stop, 15, q)
local started = {}
local reached = count and at ~= '' and count == tonumber(at)
if reached and ARGV[12] ~= '' and saga == 'running' then
  local ready = true
  for j in string.gmatch(ARGV[11], '%d+') do
    local s = now_status
    if j ~= i then
      local _
      _, s = step_state(h, j, false)
    end
    if s ~= 'success' then
      ready = false
      break
    end
  end
  if ready then
    for j in string.gmatch(ARGV[12], '%d+') do
      local jobject, js, ja, jc, jstop = step_state(h, j, nxt and got[5])
      if js == 'pending' and ja == 0 then
        pos = write(j, jobject, js, ja, jc, jstop, pos, false)
        started[#started + 1] = tonumber(j)
      else
        pos = pos + 8 + 2 * tonumber(ARGV[pos + 3])
      end
    end
  end
end
redis.call('HSET', h, unpack(sets))
if #deleted > 0 then redis.call('HDEL', h, unpack(deleted)) end
local finished = 0
--FINISH--
local all = false
if reached and read then all = redis.call('HGETALL', h) end
return {1, status, attempt, comp, saga, owner, expires, count, all, started, finished}
"""
)

# Create or move one late-success entry of a step (see `SagaBackend.record_late`).
# Entries hold JSON texts (see the module docstring): cjson moves strings exactly.
RECORD_LATE = (
    _STRING
    + _HEAD
    + _RARE
    + _STEP_STATE
    + """
-- KEYS[1] execution hash
-- ARGV[1] step index, ARGV[2] attempt (the entry's key), ARGV[3] the JSON text of the
-- state the entry must be in ('': the entry must not exist), ARGV[4] now,
-- ARGV[5..] key, JSON text pairs merged into the entry
-- Returns {applied, step status, attempt, comp_attempt, saga status (names), lease
-- owner, lease expiry (raw JSON or nil)}.
local h, i = KEYS[1], ARGV[1]
local p = 's:' .. i
local got = redis.call('HMGET', h, 'h:status', p, p .. ':l', p .. ':lo', p .. ':le')
if not got[1] then return redis.error_reply('NOSAGA') end
local object, status, attempt, comp = step_state(h, i, got[2])
if not object then return redis.error_reply('NOSTEP') end
if object ~= got[2] then
  got = redis.call('HMGET', h, 'h:status', p, p .. ':l', p .. ':lo', p .. ':le')
end
local late = {}
if got[3] and got[3] ~= 'null' then late = cjson.decode(got[3]) end
local entry = late[ARGV[2]]
if entry == cjson.null then entry = nil end
local ok
if ARGV[3] == '' then
  ok = entry == nil
else
  ok = type(entry) == 'table' and entry.state == ARGV[3]
end
if ok then
  entry = entry or {}
  for n = 5, #ARGV, 2 do entry[ARGV[n]] = ARGV[n + 1] end
  late[ARGV[2]] = entry
  redis.call('HSET', h, p .. ':l', cjson.encode(late), 'h:updated_at', ARGV[4])
end
return {ok and 1 or 0, status, attempt, comp, string.sub(got[1], 2, -2), got[4], got[5]}
"""
)

# Renew leases (see `SagaBackend.renew_leases`). A standalone server gets every lease
# of a heartbeat in one call; on a cluster each call carries the leases of one
# execution (one slot), and the calls go out in one pipeline.
RENEW = (
    _STRING
    + _HEAD
    + _RARE
    + _STEP_STATE
    + """
-- KEYS execution hashes; ARGV[1] the new expiry (JSON number); a renewal is not
-- progress: it leaves the execution's updated_at alone
-- ARGV[2..] four per lease: position of its execution in KEYS, step index, attempt
-- (prefixed with 'c' for a compensation attempt), owner (JSON text)
-- Returns the 1-based positions of the leases that are lost (left untouched).
local lost = {}
local n = 0
for k = 2, #ARGV, 4 do
  n = n + 1
  local h, i = KEYS[tonumber(ARGV[k])], ARGV[k + 1]
  local p = 's:' .. i
  local got = redis.call('HMGET', h, 'h:status', p, p .. ':lo')
  local ok = got[1] ~= false
  local object, status, attempt, comp
  if ok then
    object, status, attempt, comp = step_state(h, i, got[2])
    ok = object ~= nil
  end
  if ok then
    local a = ARGV[k + 2]
    if string.sub(a, 1, 1) == 'c' then
      ok = status == 'compensating' and comp == tonumber(string.sub(a, 2))
    else
      ok = status == 'running' and attempt == tonumber(a)
    end
    local held = got[3]
    if ok and held and held ~= 'null' and held ~= ARGV[k + 3] then
      ok = cjson.decode(held) == cjson.decode(ARGV[k + 3])
    end
  end
  if ok then
    redis.call('HSET', h, p .. ':lo', ARGV[k + 3], p .. ':le', ARGV[1])
  else
    lost[#lost + 1] = n
  end
end
return lost
"""
)

# The execution update of UPDATE_SAGA, as a function of its KEYS (K) and ARGV (A): the
# finishing step script (FINISH_STEP) ends the saga with it in the same call.
_SAGA_UPDATE = """
-- KEYS[1] execution hash, KEYS[2] its counters
-- ARGV[1] now, ARGV[2] allowed statuses (space separated), ARGV[3] TTL seconds for a
-- finished status (0: keep; leaving a finished status clears the expiry whatever
-- this is: the whole execution, steps included, lives in this one key),
-- ARGV[4] done channel ('' to leave the announcement to the caller: TIDIED on a
-- cluster), ARGV[5] the store's key prefix: when not empty (standalone servers only)
-- the status indexes are moved here too, and the execution's idempotency key and
-- children index take or lose the expiry with it,
-- ARGV[6] the created_at the caller knows the execution by ('' to skip the check;
-- a mismatch returns -1: the id now names another execution),
-- ARGV[7..] field, JSON value pairs
-- A status that becomes finished deletes the counters.
-- Returns {applied, status before, status after} (statuses as names).
local function update_saga(K, A)
  local h = K[1]
  local stored = redis.call('HMGET', h, 'h:status', 'h:created_at', 'h')
  local old, created = stored[1], stored[2]
  if not old then return {0, false, false} end
  if A[6] ~= '' and created ~= A[6] then
    return {-1, false, false}
  end
  if not allowed(A[2], string.sub(old, 2, -2)) then
    return {0, string.sub(old, 2, -2), string.sub(old, 2, -2)}
  end
  local sets = {'h:updated_at', A[1]}
  local new = old
  for k = 7, #A, 2 do
    sets[#sets + 1] = 'h:' .. A[k]
    sets[#sets + 1] = A[k + 1]
    if A[k] == 'status' then new = A[k + 1] end
  end
  redis.call('HSET', h, unpack(sets))
  if new ~= old then
    local ttl = tonumber(A[3])
    local follow = {}
    if A[5] ~= '' then
      local ix = A[5] .. 'idx:'
      -- The header as JSON text: its saga name read off its start when the name has no
      -- escape, and no idempotency key unless its member is there (else cjson decodes it).
      local raw = stored[3]
      local name = string.match(raw, '^{"saga_name":"([^"\\\\]*)"')
      local idem_key = nil
      if not name or string.find(raw, '"idempotency_key":', 1, true) then
        local head = cjson.decode(raw)
        name, idem_key = head.saga_name, head.idempotency_key
      end
      local id = string.sub(h, #A[5] + 2, -2)
      local before, after = string.sub(old, 2, -2), string.sub(new, 2, -2)
      redis.call('ZREM', ix .. 'status:' .. before, id)
      redis.call('ZREM', ix .. 'name:' .. name .. ':status:' .. before, id)
      -- The score: created_at in whole microseconds (`indexes.score`'s rule).
      local score = math.max(math.floor(tonumber(created) * 1000000 + 0.5), SCORE_FLOOR)
      score = string.format('%d', score)
      redis.call('ZADD', ix .. 'status:' .. after, score, id)
      redis.call('ZADD', ix .. 'name:' .. name .. ':status:' .. after, score, id)
      follow[#follow + 1] = ix .. 'parent:' .. id
      if type(idem_key) == 'string' then
        local idem = A[5] .. 'idem:' .. idem_key
        if redis.call('GET', idem) == id then follow[#follow + 1] = idem end
      end
    end
    if TERMINAL[new] then
      redis.call('DEL', K[2])
      if ttl > 0 then
        redis.call('EXPIRE', h, ttl)
        for _, key in ipairs(follow) do redis.call('EXPIRE', key, ttl) end
      end
      if A[4] ~= '' then redis.call('PUBLISH', A[4], string.sub(new, 2, -2)) end
    elseif TERMINAL[old] then
      -- Back to an active status (an operator retry, a revert): never an expiry on an
      -- unfinished execution, whatever TTL this caller was configured with.
      redis.call('PERSIST', h)
      for _, key in ipairs(follow) do redis.call('PERSIST', key) end
    end
  end
  return {1, string.sub(old, 2, -2), string.sub(new, 2, -2)}
end
""".replace("SCORE_FLOOR", str(scores.FLOOR))

UPDATE_SAGA = _LOCALS + _ALLOWED + _TERMINAL + _SAGA_UPDATE + "return update_saga(KEYS, ARGV)\n"

_FINISH = """
local n = tonumber(ARGV[14]) or 0
if n > 0 then
  local ended = update_saga({h, KEYS[2]}, {unpack(ARGV, #ARGV - n + 1)})
  if ended[1] == 1 then finished = 1 end
end
"""

UPDATE_STEP = _LOCALS + _ALLOWED + _STEP_WRITE.replace("--FINISH--\n", "")

# A step write that ends the saga when it applies (the last step's success): UPDATE_STEP
# then UPDATE_SAGA on the same hash, in one call. A step that does not finish the saga
# runs UPDATE_STEP, which does not build the saga update's function on every call.
FINISH_STEP = (
    _LOCALS
    + _ALLOWED
    + _TERMINAL
    + _SAGA_UPDATE
    + _STEP_WRITE.replace("--FINISH--\n", _FINISH.lstrip("\n"))
)

# Index entries scored by the layout before this one (created_at in seconds, a float:
# see `indexes.score`) rescored in whole microseconds, a chunk at a time. XX: an entry
# removed meanwhile (a status change moved it) is not put back.
RESCORE = """
-- KEYS[1] index; ARGV[1] entries per call, ARGV[2] scores below this are in seconds
-- Returns the number of entries rescored (fewer than ARGV[1]: none is left).
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[1]))
for k = 1, #rows, 2 do
  local score = math.max(math.floor(tonumber(rows[k + 1]) * 1000000 + 0.5), tonumber(ARGV[2]))
  redis.call('ZADD', KEYS[1], 'XX', string.format('%d', score), rows[k])
end
return #rows / 2
"""

# Cluster status change, last step, once the indexes are tidy: announce a terminal
# status, and return the status now (one that came back meanwhile gets its entries
# back). The channel carries the execution's hash tag, so this runs on one node.
TIDIED = """
-- KEYS[1] execution hash; ARGV[1] done channel ('' for none), ARGV[2] the status
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return redis.call('HGET', KEYS[1], 'h:status')
"""

DELETE_FINISHED = (
    _TERMINAL
    + """
-- KEYS[1] execution hash, KEYS[2] its counters; ARGV[1] finished-before cutoff ('' any)
local raw = redis.call('HGET', KEYS[1], 'h:status')
if not raw then return 0 end
if not TERMINAL[raw] then return -1 end
if ARGV[1] ~= '' then
  local finished = redis.call('HGET', KEYS[1], 'h:finished_at')
  if not finished or finished == 'null' then
    finished = redis.call('HGET', KEYS[1], 'h:updated_at')
  end
  if tonumber(finished) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""
)
