"""Lua scripts: each is one atomic compare-and-set on one execution hash (one slot).

Values are stored as JSON text per field, so user data is never re-encoded by
Lua (cjson would round numbers). Statuses are compared as their JSON text.
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

UPDATE_STEP = """
-- KEYS[1] execution hash
-- ARGV[1] step index, ARGV[2] now (JSON), ARGV[3] allowed step statuses (space separated)
-- ARGV[4] attempt ==, ARGV[5] attempt <=, ARGV[6] allowed saga statuses
-- ARGV[7] comp_attempt ==, ARGV[8] comp_attempt <=, ARGV[9] counter name
-- ARGV[10..] field, value pairs (step fields, without the s:<i>: prefix)
local h = KEYS[1]
local p = 's:' .. ARGV[1] .. ':'
local saga_status = redis.call('HGET', h, 'h:status')
if not saga_status then return redis.error_reply('NOSAGA') end
local status = redis.call('HGET', h, p .. 'status')
if not status then return redis.error_reply('NOSTEP') end
local attempt = tonumber(redis.call('HGET', h, p .. 'attempt') or '0')
local comp_attempt = tonumber(redis.call('HGET', h, p .. 'comp_attempt') or '0')
local function allowed(list, value)
  if list == '' then return true end
  for s in string.gmatch(list, '%S+') do
    if ('"' .. s .. '"') == value then return true end
  end
  return false
end
local ok = allowed(ARGV[3], status) and allowed(ARGV[6], saga_status)
if ok and ARGV[4] ~= '' and attempt ~= tonumber(ARGV[4]) then ok = false end
if ok and ARGV[5] ~= '' and attempt > tonumber(ARGV[5]) then ok = false end
if ok and ARGV[7] ~= '' and comp_attempt ~= tonumber(ARGV[7]) then ok = false end
if ok and ARGV[8] ~= '' and comp_attempt > tonumber(ARGV[8]) then ok = false end
if not ok then return {0, status, attempt, comp_attempt, saga_status, false} end
local count = false
for i = 10, #ARGV, 2 do
  redis.call('HSET', h, p .. ARGV[i], ARGV[i + 1])
end
if ARGV[9] ~= '' then
  count = redis.call('HINCRBY', h, 'c:' .. ARGV[9], 1)
  redis.call('HSET', h, p .. 'seq', count)
end
redis.call('HSET', h, 'h:updated_at', ARGV[2])
status = redis.call('HGET', h, p .. 'status')
attempt = tonumber(redis.call('HGET', h, p .. 'attempt') or '0')
comp_attempt = tonumber(redis.call('HGET', h, p .. 'comp_attempt') or '0')
return {1, status, attempt, comp_attempt, saga_status, count}
"""

UPDATE_SAGA = """
-- KEYS[1] execution hash
-- ARGV[1] now (JSON), ARGV[2] allowed statuses (space separated), ARGV[3] TTL seconds
-- for a terminal status (0: keep), ARGV[4] done channel, ARGV[5] index prefix: when
-- not empty (standalone servers only) the status indexes are moved here too,
-- ARGV[6..] field, value pairs
local h = KEYS[1]
local status = redis.call('HGET', h, 'h:status')
if not status then return {0, false, false} end
if ARGV[2] ~= '' then
  local found = false
  for s in string.gmatch(ARGV[2], '%S+') do
    if ('"' .. s .. '"') == status then found = true end
  end
  if not found then return {0, status, status} end
end
for i = 6, #ARGV, 2 do
  redis.call('HSET', h, 'h:' .. ARGV[i], ARGV[i + 1])
end
redis.call('HSET', h, 'h:updated_at', ARGV[1])
local new = redis.call('HGET', h, 'h:status')
if ARGV[5] ~= '' and new ~= status then
  local ix = ARGV[5]
  local name = cjson.decode(redis.call('HGET', h, 'h:saga_name'))
  local created = redis.call('HGET', h, 'h:created_at')
  local id = cjson.decode(redis.call('HGET', h, 'h:saga_id'))
  local old_s, new_s = cjson.decode(status), cjson.decode(new)
  redis.call('ZREM', ix .. 'status:' .. old_s, id)
  redis.call('ZREM', ix .. 'name:' .. name .. ':status:' .. old_s, id)
  redis.call('ZADD', ix .. 'status:' .. new_s, created, id)
  redis.call('ZADD', ix .. 'name:' .. name .. ':status:' .. new_s, created, id)
end
if new ~= status and (new == '"completed"' or new == '"compensated"' or new == '"failed"') then
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', h, tonumber(ARGV[3])) end
  redis.call('PUBLISH', ARGV[4], new)
end
return {1, status, new}
"""

DELETE_FINISHED = """
-- KEYS[1] execution hash; ARGV[1] finished-before cutoff ('' for any)
local status = redis.call('HGET', KEYS[1], 'h:status')
if not status then return 0 end
if status ~= '"completed"' and status ~= '"compensated"' and status ~= '"failed"' then
  return -1
end
if ARGV[1] ~= '' then
  local finished = redis.call('HGET', KEYS[1], 'h:finished_at')
  if not finished or finished == 'null' then finished = redis.call('HGET', KEYS[1], 'h:updated_at') end
  if tonumber(finished) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""
