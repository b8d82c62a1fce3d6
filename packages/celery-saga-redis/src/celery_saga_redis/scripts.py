"""Lua scripts: each one atomic step on one execution hash (one cluster slot).

Layout of the hash (see keys.py): ``h`` (the immutable header, JSON), ``h:<field>``
for the execution fields that change (raw JSON, written verbatim), ``s:<i>`` (a
step's small fields, one JSON object merged here with cjson), ``s:<i>:output`` and
``s:<i>:compensation_data`` (user data, raw JSON: never re-encoded by Lua, whose
cjson would round big numbers), and ``c:<name>`` counters.
"""

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
-- ARGV[7..] field, value pairs. Returns 1 (created), 0 (the id exists) or the owner.
local idem = KEYS[2]
if idem then
  local owner = redis.call('GET', idem)
  if owner and owner ~= ARGV[6] then return owner end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if idem then redis.call('SET', idem, ARGV[5]) end
local ix = ARGV[1]
for _, key in ipairs({ix .. 'all', ix .. 'name:' .. ARGV[2], ix .. 'status:' .. ARGV[3],
                      ix .. 'name:' .. ARGV[2] .. ':status:' .. ARGV[3]}) do
  redis.call('ZADD', key, ARGV[4], ARGV[5])
end
return 1
"""

UPDATE_STEP = (
    _ALLOWED
    + """
-- KEYS[1] execution hash
-- ARGV[1] step index, ARGV[2] now, ARGV[3] allowed step statuses (space separated)
-- ARGV[4] attempt ==, ARGV[5] attempt <=, ARGV[6] allowed saga statuses
-- ARGV[7] comp_attempt ==, ARGV[8] comp_attempt <=, ARGV[9] counter name
-- ARGV[10] act when the counter reaches this value ('' never): return the whole hash
-- (unless it is prefixed with '!': the caller needs only the started steps)
-- ARGV[11] JSON {check: [i...], start: [i...], changes: {"i": {...}}} or '': when the
-- counter reaches ARGV[10], the saga is running and every `check` step succeeded,
-- the `start` steps still pending at attempt 0 get their changes (the next stage starts)
-- ARGV[12..] field, JSON value pairs
local h = KEYS[1]
local p = 's:' .. ARGV[1]
local saga_status = redis.call('HGET', h, 'h:status')
if not saga_status then return redis.error_reply('NOSAGA') end
local raw = redis.call('HGET', h, p)
if not raw then return redis.error_reply('NOSTEP') end
saga_status = cjson.decode(saga_status)
local step = cjson.decode(raw)
local attempt = tonumber(step.attempt or 0)
local comp_attempt = tonumber(step.comp_attempt or 0)
local ok = allowed(ARGV[3], step.status) and allowed(ARGV[6], saga_status)
if ok and ARGV[4] ~= '' and attempt ~= tonumber(ARGV[4]) then ok = false end
if ok and ARGV[5] ~= '' and attempt > tonumber(ARGV[5]) then ok = false end
if ok and ARGV[7] ~= '' and comp_attempt ~= tonumber(ARGV[7]) then ok = false end
if ok and ARGV[8] ~= '' and comp_attempt > tonumber(ARGV[8]) then ok = false end
if not ok then return {0, step.status, attempt, comp_attempt, saga_status, false, false} end
for i = 12, #ARGV, 2 do
  local k = ARGV[i]
  if k == 'output' or k == 'compensation_data' then
    redis.call('HSET', h, p .. ':' .. k, ARGV[i + 1])
  else
    step[k] = cjson.decode(ARGV[i + 1])
  end
end
local count = false
if ARGV[9] ~= '' then
  count = redis.call('HINCRBY', h, 'c:' .. ARGV[9], 1)
  step.seq = count
end
redis.call('HSET', h, p, cjson.encode(step), 'h:updated_at', ARGV[2])
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
          for k, v in pairs(spec.changes[tostring(i)]) do next_step[k] = v end
          redis.call('HSET', h, key, cjson.encode(next_step))
          started[#started + 1] = i
        end
      end
    end
  end
  if read then all = redis.call('HGETALL', h) end
end
return {1, step.status, tonumber(step.attempt or 0), tonumber(step.comp_attempt or 0),
        saga_status, count, all, started}
"""
)

UPDATE_SAGA = (
    _ALLOWED
    + """
-- KEYS[1] execution hash
-- ARGV[1] now, ARGV[2] allowed statuses (space separated), ARGV[3] TTL seconds for a
-- terminal status (0: keep), ARGV[4] done channel ('' to leave the announcement to
-- the caller: TIDIED on a cluster), ARGV[5] index prefix: when not
-- empty (standalone servers only) the status indexes are moved here too,
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
  if new == 'completed' or new == 'compensated' or new == 'failed' or new == 'cancelled' then
    if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', h, tonumber(ARGV[3])) end
    if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], new) end
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

DELETE_FINISHED = """
-- KEYS[1] execution hash; ARGV[1] finished-before cutoff ('' for any)
local raw = redis.call('HGET', KEYS[1], 'h:status')
if not raw then return 0 end
local status = cjson.decode(raw)
if status ~= 'completed' and status ~= 'compensated' and status ~= 'failed'
   and status ~= 'cancelled' then
  return -1
end
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
