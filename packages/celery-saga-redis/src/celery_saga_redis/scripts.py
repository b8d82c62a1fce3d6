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

CREATE = """
-- KEYS[1] execution hash; ARGV: field, value, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# Standalone servers only (it touches index keys built here, outside KEYS): create
# the execution, claim its idempotency key and index it in one atomic step.
CREATE_INDEXED = """
-- KEYS[1] execution hash, KEYS[2] idempotency key ('' when none)
-- ARGV[1] index prefix, ARGV[2] saga name, ARGV[3] status, ARGV[4] created_at,
-- ARGV[5] saga id, ARGV[6..] field, value pairs
if KEYS[2] ~= '' then
  local owner = redis.call('GET', KEYS[2])
  if owner then return owner end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[5]) end
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
-- ARGV[10] return the whole hash when the counter reaches this value ('' never)
-- ARGV[11..] field, JSON value pairs
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
for i = 11, #ARGV, 2 do
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
if count and ARGV[10] ~= '' and count == tonumber(ARGV[10]) then
  all = redis.call('HGETALL', h)
end
return {1, step.status, tonumber(step.attempt or 0), tonumber(step.comp_attempt or 0),
        saga_status, count, all}
"""
)

UPDATE_SAGA = (
    _ALLOWED
    + """
-- KEYS[1] execution hash
-- ARGV[1] now, ARGV[2] allowed statuses (space separated), ARGV[3] TTL seconds for a
-- terminal status (0: keep), ARGV[4] done channel, ARGV[5] index prefix: when not
-- empty (standalone servers only) the status indexes are moved here too,
-- ARGV[6..] field, JSON value pairs
local h = KEYS[1]
local raw = redis.call('HGET', h, 'h:status')
if not raw then return {0, false, false} end
local status = cjson.decode(raw)
if not allowed(ARGV[2], status) then return {0, status, status} end
for i = 6, #ARGV, 2 do
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
  if new == 'completed' or new == 'compensated' or new == 'failed' then
    if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', h, tonumber(ARGV[3])) end
    redis.call('PUBLISH', ARGV[4], new)
  end
end
return {1, status, new}
"""
)

DELETE_FINISHED = """
-- KEYS[1] execution hash; ARGV[1] finished-before cutoff ('' for any)
local raw = redis.call('HGET', KEYS[1], 'h:status')
if not raw then return 0 end
local status = cjson.decode(raw)
if status ~= 'completed' and status ~= 'compensated' and status ~= 'failed' then
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
