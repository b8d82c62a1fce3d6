"""Lua scripts: each one atomic step on one execution hash (one cluster slot).

Layout of the hash (see keys.py): ``h`` (the immutable header, JSON), ``h:<field>``
for the execution fields that change (raw JSON, written verbatim), ``s:<i>`` (a
step's small fields, one JSON object merged here with cjson), ``s:<i>:<field>`` for
the step fields of `RAW_STEP_FIELDS` (raw JSON, never re-encoded by Lua, whose cjson
keeps 14 significant digits: it would round big numbers in user data and timestamps
that must compare exactly, such as a lease's expiry), and ``c:<name>`` counters.

``s:<i>:late`` is raw JSON of a particular shape, so `RECORD_LATE` can merge entries
with cjson without rounding anything: ``{"<attempt>": {"<key>": "<JSON text>"}}``,
every value of an entry kept as the JSON text of the value (see backend.py).
"""

from celery_saga.models import TERMINAL_STATUSES

#: Step fields kept in hash fields of their own (``s:<i>:<name>``), as raw JSON.
RAW_STEP_FIELDS = (
    "output",
    "compensation_data",
    "late",
    "lease_owner",
    "lease_expires_at",
    "sent_at",
)

_RAW = "local RAW = {" + ", ".join(f"{name} = true" for name in RAW_STEP_FIELDS) + "}\n"

#: The finished statuses, as a Lua set built from `TERMINAL_STATUSES` (so a status the
#: model adds, such as REVERTED, expires, announces and deletes like the others).
_TERMINAL = (
    "local TERMINAL = {"
    + ", ".join(f"{status} = true" for status in sorted(s.value for s in TERMINAL_STATUSES))
    + "}\n"
)

# Shared by the scripts that list allowed statuses: ARGV holds space-separated names.
_ALLOWED = """
local function allowed(list, value)
  if list == '' then return true end
  for s in string.gmatch(list, '%S+') do
    if s == value then return true end
  end
  return false
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

# Standalone servers only (it touches index keys built here, outside KEYS): create
# the execution, claim its idempotency key and index it in one atomic step.
CREATE_INDEXED = """
-- KEYS[1] execution hash, KEYS[2] idempotency key (absent when none: an empty key
-- name would fall outside an ACL user's key patterns)
-- ARGV[1] index prefix, ARGV[2] saga name, ARGV[3] status, ARGV[4] created_at,
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
return 1
"""

# The lease conditions of a step write (ARGV only when the caller has some): the same
# rules as `StepExpect.refusal`. `owner` and `expires` are the stored raw JSON (false
# when absent); `spec` is JSON [lease_free_at, lease_holder, lease_owners], null for
# an absent condition, and null in lease_owners for "no owner".
_LEASE_OK = """
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
"""

UPDATE_STEP = (
    _ALLOWED
    + _RAW
    + _LEASE_OK
    + """
-- KEYS[1] execution hash
-- ARGV[1] step index, ARGV[2] now, ARGV[3] allowed step statuses (space separated)
-- ARGV[4] attempt ==, ARGV[5] attempt <=, ARGV[6] allowed saga statuses
-- ARGV[7] comp_attempt ==, ARGV[8] comp_attempt <=, ARGV[9] counter name
-- ARGV[10] act when the counter reaches this value ('' never): return the whole hash
-- (unless it is prefixed with '!': the caller needs only the started steps)
-- ARGV[11] JSON {check: [i...], start: [i...], changes: {"i": [field, JSON text...]}}
-- or '': when the counter reaches ARGV[10], the saga is running and every `check`
-- step succeeded, the `start` steps still pending at attempt 0 get their changes
-- (the next stage starts)
-- ARGV[12] lease conditions ('' for none; see lease_ok)
-- ARGV[13..] field, JSON value pairs
-- Returns {applied, step status, attempt, comp_attempt, saga status, lease owner,
-- lease expiry (both raw JSON or nil), count, the whole hash, started steps}.
local h = KEYS[1]
local p = 's:' .. ARGV[1]
local got = redis.call('HMGET', h, 'h:status', p, p .. ':lease_owner', p .. ':lease_expires_at')
if not got[1] then return redis.error_reply('NOSAGA') end
if not got[2] then return redis.error_reply('NOSTEP') end
local saga_status = cjson.decode(got[1])
local step = cjson.decode(got[2])
local owner, expires = got[3], got[4]
local attempt = tonumber(step.attempt or 0)
local comp_attempt = tonumber(step.comp_attempt or 0)
local ok = allowed(ARGV[3], step.status) and allowed(ARGV[6], saga_status)
if ok and ARGV[4] ~= '' and attempt ~= tonumber(ARGV[4]) then ok = false end
if ok and ARGV[5] ~= '' and attempt > tonumber(ARGV[5]) then ok = false end
if ok and ARGV[7] ~= '' and comp_attempt ~= tonumber(ARGV[7]) then ok = false end
if ok and ARGV[8] ~= '' and comp_attempt > tonumber(ARGV[8]) then ok = false end
if ok and ARGV[12] ~= '' then ok = lease_ok(ARGV[12], owner, expires) end
if not ok then return {0, step.status, attempt, comp_attempt, saga_status, owner, expires} end
local sets = {'h:updated_at', ARGV[2]}
local dirty = false
for i = 13, #ARGV, 2 do
  local k = ARGV[i]
  if RAW[k] then
    sets[#sets + 1] = p .. ':' .. k
    sets[#sets + 1] = ARGV[i + 1]
    if k == 'lease_owner' then owner = ARGV[i + 1] end
    if k == 'lease_expires_at' then expires = ARGV[i + 1] end
  else
    step[k] = cjson.decode(ARGV[i + 1])
    dirty = true
  end
end
local count = false
if ARGV[9] ~= '' then
  count = redis.call('HINCRBY', h, 'c:' .. ARGV[9], 1)
  step.seq = count
  dirty = true
end
if dirty then
  sets[#sets + 1] = p
  sets[#sets + 1] = cjson.encode(step)
end
redis.call('HSET', h, unpack(sets))
local all = false
local started = {}
local at, read = ARGV[10], true
if string.sub(at, 1, 1) == '!' then at, read = string.sub(at, 2), false end
if count and at ~= '' and count == tonumber(at) then
  if ARGV[11] ~= '' and saga_status == 'running' then
    local spec = cjson.decode(ARGV[11])
    local ready = true
    for _, i in ipairs(spec.check) do
      local other = cjson.decode(redis.call('HGET', h, 's:' .. i))
      if other.status ~= 'success' then ready = false end
    end
    if ready then
      for _, i in ipairs(spec.start) do
        local key = 's:' .. i
        local next_step = cjson.decode(redis.call('HGET', h, key))
        if next_step.status == 'pending' and tonumber(next_step.attempt or 0) == 0 then
          local changes = spec.changes[tostring(i)]
          local writes = {}
          for j = 1, #changes, 2 do
            if RAW[changes[j]] then
              writes[#writes + 1] = key .. ':' .. changes[j]
              writes[#writes + 1] = changes[j + 1]
            else
              next_step[changes[j]] = cjson.decode(changes[j + 1])
            end
          end
          writes[#writes + 1] = key
          writes[#writes + 1] = cjson.encode(next_step)
          redis.call('HSET', h, unpack(writes))
          started[#started + 1] = i
        end
      end
    end
  end
  if read then all = redis.call('HGETALL', h) end
end
return {1, step.status, tonumber(step.attempt or 0), tonumber(step.comp_attempt or 0),
        saga_status, owner, expires, count, all, started}
"""
)

# Create or move one late-success entry of a step (see `SagaBackend.record_late`).
# Entries hold JSON texts (see the module docstring): cjson moves strings exactly.
RECORD_LATE = """
-- KEYS[1] execution hash
-- ARGV[1] step index, ARGV[2] attempt (the entry's key), ARGV[3] the JSON text of the
-- state the entry must be in ('': the entry must not exist), ARGV[4] now,
-- ARGV[5..] key, JSON text pairs merged into the entry
-- Returns {applied, step status, attempt, comp_attempt, saga status, lease owner,
-- lease expiry (both raw JSON or nil)}.
local h = KEYS[1]
local p = 's:' .. ARGV[1]
local got = redis.call('HMGET', h, 'h:status', p, p .. ':late',
                       p .. ':lease_owner', p .. ':lease_expires_at')
if not got[1] then return redis.error_reply('NOSAGA') end
if not got[2] then return redis.error_reply('NOSTEP') end
local step = cjson.decode(got[2])
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
  for i = 5, #ARGV, 2 do entry[ARGV[i]] = ARGV[i + 1] end
  late[ARGV[2]] = entry
  redis.call('HSET', h, p .. ':late', cjson.encode(late), 'h:updated_at', ARGV[4])
end
return {ok and 1 or 0, step.status, tonumber(step.attempt or 0),
        tonumber(step.comp_attempt or 0), cjson.decode(got[1]), got[4], got[5]}
"""

# Renew leases (see `SagaBackend.renew_leases`). A standalone server gets every lease
# of a heartbeat in one call; on a cluster each call carries the leases of one
# execution (one slot), and the calls go out in one pipeline.
RENEW = """
-- KEYS execution hashes; ARGV[1] the new expiry (JSON number); a renewal is not
-- progress: it leaves the execution's updated_at alone
-- ARGV[2..] four per lease: position of its execution in KEYS, step index, attempt
-- (prefixed with 'c' for a compensation attempt), owner (JSON text)
-- Returns the 1-based positions of the leases that are lost (left untouched).
local lost = {}
local n = 0
for i = 2, #ARGV, 4 do
  n = n + 1
  local h = KEYS[tonumber(ARGV[i])]
  local p = 's:' .. ARGV[i + 1]
  local got = redis.call('HMGET', h, 'h:status', p, p .. ':lease_owner')
  local ok = got[1] and got[2]
  if ok then
    local step = cjson.decode(got[2])
    local a = ARGV[i + 2]
    if string.sub(a, 1, 1) == 'c' then
      ok = step.status == 'compensating'
           and tonumber(step.comp_attempt or 0) == tonumber(string.sub(a, 2))
    else
      ok = step.status == 'running' and tonumber(step.attempt or 0) == tonumber(a)
    end
    local held = got[3]
    if ok and held and held ~= 'null' and held ~= ARGV[i + 3] then
      ok = cjson.decode(held) == cjson.decode(ARGV[i + 3])
    end
  end
  if ok then
    redis.call('HSET', h, p .. ':lease_owner', ARGV[i + 3], p .. ':lease_expires_at', ARGV[1])
  else
    lost[#lost + 1] = n
  end
end
return lost
"""

UPDATE_SAGA = (
    _ALLOWED
    + _TERMINAL
    + """
-- KEYS[1] execution hash
-- ARGV[1] now, ARGV[2] allowed statuses (space separated), ARGV[3] TTL seconds for a
-- terminal status (0: keep; leaving a terminal status clears the expiry whatever
-- this is: the whole execution, steps included, lives in this one key),
-- ARGV[4] done channel ('' to leave the announcement to the caller: TIDIED on a
-- cluster), ARGV[5] index prefix: when not empty (standalone servers only) the
-- status indexes are moved here too,
-- ARGV[6] the created_at the caller knows the execution by ('' to skip the check;
-- a mismatch returns -1: the id now names another execution),
-- ARGV[7..] field, JSON value pairs
local h = KEYS[1]
local raw = redis.call('HGET', h, 'h:status')
if not raw then return {0, false, false} end
if ARGV[6] ~= '' and redis.call('HGET', h, 'h:created_at') ~= ARGV[6] then
  return {-1, false, false}
end
local status = cjson.decode(raw)
if not allowed(ARGV[2], status) then return {0, status, status} end
for i = 7, #ARGV, 2 do
  redis.call('HSET', h, 'h:' .. ARGV[i], ARGV[i + 1])
end
redis.call('HSET', h, 'h:updated_at', ARGV[1])
local new = cjson.decode(redis.call('HGET', h, 'h:status'))
if new ~= status then
  if ARGV[5] ~= '' then
    local ix = ARGV[5]
    local head = cjson.decode(redis.call('HGET', h, 'h'))
    local name, id = head.saga_name, head.saga_id
    local created = redis.call('HGET', h, 'h:created_at')
    redis.call('ZREM', ix .. 'status:' .. status, id)
    redis.call('ZREM', ix .. 'name:' .. name .. ':status:' .. status, id)
    redis.call('ZADD', ix .. 'status:' .. new, created, id)
    redis.call('ZADD', ix .. 'name:' .. name .. ':status:' .. new, created, id)
  end
  if TERMINAL[new] then
    if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', h, tonumber(ARGV[3])) end
    if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], new) end
  elseif TERMINAL[status] then
    -- Back to an active status (an operator retry): never an expiry on an unfinished
    -- execution, whatever TTL this caller was configured with.
    redis.call('PERSIST', h)
  end
end
return {1, status, new}
"""
)

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
-- KEYS[1] execution hash; ARGV[1] finished-before cutoff ('' for any)
local raw = redis.call('HGET', KEYS[1], 'h:status')
if not raw then return 0 end
if not TERMINAL[cjson.decode(raw)] then return -1 end
if ARGV[1] ~= '' then
  local finished = redis.call('HGET', KEYS[1], 'h:finished_at')
  if not finished or finished == 'null' then
    finished = redis.call('HGET', KEYS[1], 'h:updated_at')
  end
  if tonumber(finished) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""
)
