"""The store's Lua scripts on executions: create, claim, status change, tidy, delete.

Each is one atomic step on one execution hash (one cluster slot), except where its
comment says it touches index keys (standalone servers only) or one key of any slot.
The step writes are in `step_scripts`; the Lua they share is in `lua`.
"""

from __future__ import annotations

from celery_saga_redis import keys, lua, scores

# Cluster create, in three steps that each touch one slot: BEGIN_CREATE marks the
# execution as being created (a marker holding the create's token, with a short
# lifetime), the client indexes it, CREATE writes it and clears the mark. A reader
# that meets an index entry whose execution is missing removes the entry only when
# the mark is absent too (the execution is gone, not pending). A create whose mark
# expired (its creator was killed, or frozen past the lifetime) is taken over by the
# next create of the id; CREATE writes only under its own mark, so a create that lost
# its mark starts again (and indexes again what a reader may have removed).
BEGIN_CREATE = """
-- KEYS[1] execution hash, KEYS[2] its 'creating' marker
-- ARGV[1] this create's token, ARGV[2] marker lifetime (s)
-- Returns 1 (marked), 0 (the execution exists) or -1 (another create holds the mark).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return -1 end
return 1
"""

CREATE = """
-- KEYS[1] execution hash, KEYS[2] its 'creating' marker
-- ARGV[1] this create's token, ARGV[2..]: field, value, field, value, ...
-- Returns 1 (written), 0 (the execution exists) or -1 (the mark is not this create's).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
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
CREATE_INDEXED = (
    lua.EXTRAS
    + """
-- KEYS[1] execution hash, KEYS[2] idempotency key (absent when none: an empty key
-- name would fall outside an ACL user's key patterns)
-- ARGV[1] index prefix, ARGV[2] saga name, ARGV[3] status, ARGV[4] index score,
-- ARGV[5] saga id, ARGV[6] an owner of the idempotency key known to be gone (''),
-- ARGV[7] the parent execution's id ('' for none: then no children index entry),
-- ARGV[8] '1' to add the saga name to the set of names ('': the caller knows it is
-- there), ARGV[9] the parent execution's hash ('' for none): a parent whose extras flag
-- says it has none (`layout.EXTRAS`) is told it has a children index now,
-- ARGV[10..] field, value pairs. Returns 1 (created), 0 (the id exists) or the owner.
local idem = KEYS[2]
if idem then
  local owner = redis.call('GET', idem)
  if owner and owner ~= ARGV[6] then return owner end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
if ARGV[9] ~= '' and redis.call('HGET', ARGV[9], EXTRAS) == '0' then
  redis.call('HSET', ARGV[9], EXTRAS, '1')
end
if idem then redis.call('SET', idem, ARGV[5]) end
local ix = ARGV[1]
local indexes = {ix .. 'status:' .. ARGV[3],
                 ix .. 'name:' .. ARGV[2] .. ':status:' .. ARGV[3]}
if ARGV[7] ~= '' then indexes[#indexes + 1] = ix .. 'parent:' .. ARGV[7] end
for _, key in ipairs(indexes) do
  redis.call('ZADD', key, ARGV[4], ARGV[5])
end
if ARGV[8] ~= '' then redis.call('SADD', ix .. 'names', ARGV[2]) end
return 1
"""
)

# The execution update of UPDATE_SAGA, as a function of its KEYS (K) and ARGV (A): the
# finishing step script (`step_scripts.FINISH_STEP`) ends the saga with it in the same call.
SAGA_UPDATE = (
    """
-- KEYS[1] execution hash, KEYS[2] its counters
-- ARGV[1] now, ARGV[2] allowed statuses (space separated), ARGV[3] TTL seconds for a
-- finished status (0: keep; leaving a finished status clears the expiry whatever
-- this is: the whole execution, steps included, lives in this one key),
-- ARGV[4] done channel ('' to leave the announcement to the caller: TIDIED on a
-- cluster): it carries the new status, and a COMPLETED one its output too (up to
-- OUTPUT_SAID bytes, `keys.OUTPUT_SAID`),
-- ARGV[5] the store's key prefix: when not empty (standalone servers only)
-- the status indexes are moved here too, and the execution's idempotency key and
-- children index take or lose the expiry with it,
-- ARGV[6] the created_at the caller knows the execution by ('' to skip the check;
-- a mismatch returns -1: the id now names another execution),
-- ARGV[7..] field, JSON value pairs
-- A status that becomes finished deletes the counters.
-- (From ARGV[o + 1] on when called with an offset `o`: after a step script's own ARGV.)
-- A caller that has read the execution's h:status, h:created_at, h and x passes them as
-- `stored`, and its own writes to the hash as `sets`, starting with h:updated_at (the
-- saga's now replaces it when the change applies): one HMGET and one HSET fewer.
-- Returns {applied, status before, status after} (statuses as names).
local OUTPUT_SAID = """
    + str(keys.OUTPUT_SAID)
    + """
local function update_saga(K, A, o, stored, sets)
  local h = K[1]
  stored = stored or redis.call('HMGET', h, 'h:status', 'h:created_at', 'h', EXTRAS)
  local old, created = stored[1], stored[2]
  local result = nil
  if not old then
    result = {0, false, false}
  elseif A[o + 6] ~= '' and created ~= A[o + 6] then
    result = {-1, false, false}
  elseif not allowed(A[o + 2], string.sub(old, 2, -2)) then
    result = {0, string.sub(old, 2, -2), string.sub(old, 2, -2)}
  end
  if result then
    if sets then redis.call('HSET', h, unpack(sets)) end
    return result
  end
  if sets then sets[2] = A[o + 1] else sets = {'h:updated_at', A[o + 1]} end
  local new = old
  for k = o + 7, #A, 2 do
    sets[#sets + 1] = 'h:' .. A[k]
    sets[#sets + 1] = A[k + 1]
    if A[k] == 'status' then new = A[k + 1] end
  end
  redis.call('HSET', h, unpack(sets))
  if new ~= old then
    local ttl = tonumber(A[o + 3])
    local follow = {}
    local kids = nil
    if A[o + 5] ~= '' then
      local ix = A[o + 5] .. 'idx:'
      -- The header as JSON text: its saga name read off its start when the name has no
      -- escape, and no idempotency key unless its member is there (else cjson decodes it).
      local raw = stored[3]
      local name = string.match(raw, '^{"saga_name":"([^"\\\\]*)"')
      local idem_key = nil
      if not name or string.find(raw, '"idempotency_key":', 1, true) then
        local head = cjson.decode(raw)
        name, idem_key = head.saga_name, head.idempotency_key
      end
      local id = string.sub(h, #A[o + 5] + 2, -2)
      local before, after = string.sub(old, 2, -2), string.sub(new, 2, -2)
      redis.call('ZREM', ix .. 'status:' .. before, id)
      redis.call('ZREM', ix .. 'name:' .. name .. ':status:' .. before, id)
      local score = index_score(created)
      redis.call('ZADD', ix .. 'status:' .. after, score, id)
      redis.call('ZADD', ix .. 'name:' .. name .. ':status:' .. after, score, id)
      kids = ix .. 'parent:' .. id
      follow[#follow + 1] = kids
      if type(idem_key) == 'string' then
        local idem = A[o + 5] .. 'idem:' .. idem_key
        if redis.call('GET', idem) == id then follow[#follow + 1] = idem end
      end
    end
    if TERMINAL[new] then
      -- Few executions have counters (a stage of several steps) or children: their
      -- extras flag says so (`layout.EXTRAS`); without one (an execution written by an
      -- earlier version), one EXISTS instead of a DEL and an EXPIRE of keys not there.
      local others = 1
      if stored[4] == '0' then
        others = 0
      elseif ttl > 0 and kids then
        others = redis.call('EXISTS', K[2], kids)
      end
      if others > 0 then redis.call('DEL', K[2]) end
      if ttl > 0 then
        redis.call('EXPIRE', h, ttl)
        for _, key in ipairs(follow) do
          if key ~= kids or others > 0 then redis.call('EXPIRE', key, ttl) end
        end
      end
      if A[o + 4] ~= '' then
        -- The status; a completion also says its output (JSON text), when not too long,
        -- so a waiter needs no read: 'completed <output>'.
        local said = string.sub(new, 2, -2)
        if said == 'completed' then
          for k = o + 7, #A, 2 do
            if A[k] == 'output' and #A[k + 1] <= OUTPUT_SAID then
              said = said .. ' ' .. A[k + 1]
              break
            end
          end
        end
        redis.call('PUBLISH', A[o + 4], said)
      end
    elseif TERMINAL[old] then
      -- Back to an active status (an operator retry, a revert): never an expiry on an
      -- unfinished execution, whatever TTL this caller was configured with.
      redis.call('PERSIST', h)
      for _, key in ipairs(follow) do redis.call('PERSIST', key) end
    end
  end
  return {1, string.sub(old, 2, -2), string.sub(new, 2, -2)}
end
"""
)

UPDATE_SAGA = (
    lua.LOCALS
    + lua.EXTRAS
    + lua.ALLOWED
    + lua.TERMINAL
    + scores.LUA
    + SAGA_UPDATE
    + "return update_saga(KEYS, ARGV, 0)\n"
)

# Index entries scored by the layout before this one (created_at in seconds, a float:
# see `scores.score`) rescored in whole microseconds, a chunk at a time. XX: an entry
# removed meanwhile (a status change moved it) is not put back.
RESCORE = (
    scores.LUA
    + """
-- KEYS[1] index; ARGV[1] entries per call, ARGV[2] scores below this are in seconds
-- Returns the number of entries rescored (fewer than ARGV[1]: none is left).
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[1]))
for k = 1, #rows, 2 do
  redis.call('ZADD', KEYS[1], 'XX', index_score(rows[k + 1]), rows[k])
end
return #rows / 2
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
    lua.TERMINAL
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
