"""The step scripts: a step's write (UPDATE_STEP), with the saga's end (FINISH_STEP),
their fast forms for the common write (STEP_FAST, FINISH_FAST), late successes
(RECORD_LATE) and lease renewals (RENEW).

A step write is one HMGET and one HSET on the execution hash (`lua`'s module docstring
says how a step's object is read and rewritten); its ARGV and reply are `stepcalls`'.
"""

from __future__ import annotations

from celery_saga_redis import lua, scores, scripts

# The step write (UPDATE_STEP's code after `lua.ALLOWED`), with a place for the saga's end.
_STEP_WRITE = (
    lua.STRING
    + lua.HEAD
    + lua.REWRITE
    + lua.RARE
    + lua.STEP_STATE
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
  sets[#sets + 1] = EXTRAS  -- the execution has counters now
  sets[#sets + 1] = '1'
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
    lua.STRING
    + lua.HEAD
    + lua.RARE
    + lua.STEP_STATE
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
    lua.STRING
    + lua.HEAD
    + lua.RARE
    + lua.STEP_STATE
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

_FINISH = """
local n = tonumber(ARGV[14]) or 0
if n > 0 then
  local ended = update_saga({h, KEYS[2]}, ARGV, #ARGV - n)
  if ended[1] == 1 then finished = 1 end
end
"""

UPDATE_STEP = lua.LOCALS + lua.EXTRAS + lua.ALLOWED + _STEP_WRITE.replace("--FINISH--\n", "")

# A step write that ends the saga when it applies (the last step's success): UPDATE_STEP
# then UPDATE_SAGA on the same hash, in one call. A step that does not finish the saga
# runs UPDATE_STEP, which does not build the saga update's function on every call.
FINISH_STEP = (
    lua.LOCALS
    + lua.EXTRAS
    + lua.ALLOWED
    + lua.TERMINAL
    + scores.LUA
    + scripts.SAGA_UPDATE
    + _STEP_WRITE.replace("--FINISH--\n", _FINISH.lstrip("\n"))
)

# The common step write, in fewer instructions than UPDATE_STEP: a step of a stage of its
# own ends (its stage counts 1 without a counter) and, when it succeeded, the next stage
# of one step starts; no lease condition, no field apart written, no comp_attempt, at
# most one member set to null. Its conditions are exact heads (`lua.FAST`'s fits)
# instead of UPDATE_STEP's lists, and it appends members without cutting earlier ones
# of the same codes (the last one counts), except started_at, which it keeps right
# after the head (`layout.STARTED`). When a condition does not hold it writes nothing
# and says so, and the caller runs UPDATE_STEP, which decides (`fastpath` builds the
# call and says when it applies).
_FAST = """
-- KEYS[1] execution hash; FINISH_FAST: KEYS[2] its counters (the saga's end deletes them)
-- ARGV[1] now (updated_at, JSON), ARGV[2] the saga status the write needs (its JSON
-- text; '' any), then 6 values per step written (the step; with STEP_FAST, the next
-- stage's step too): its index, the head it must have and its new head
-- (`layout.step_head`), its started_at member, its other members and the start of a
-- member set to null (`lua.FAST`'s append); FINISH_FAST: then UPDATE_SAGA's ARGV, the
-- saga's end, applied after the write.
-- Returns 0 when the saga status or a head is not as needed (nothing written), else
-- {1, saga status (name), the step's lease owner and expiry as stored (raw JSON or
-- nil), 1 if the saga's end applied else 0}.
local h, i = KEYS[1], ARGV[3]
local p = 's:' .. i
local two = #ARGV > 8
local got
if two then
  got = redis.call('HMGET', h, 'h:status', p, p .. ':lo', p .. ':le', 's:' .. ARGV[9])
else
  got = redis.call('HMGET', h, 'h:status', p, p .. ':lo', p .. ':le')
end
local saga = got[1]
if not saga or (ARGV[2] ~= '' and saga ~= ARGV[2]) then return 0 end
if not fits(got[2], ARGV[4]) or (two and not fits(got[5], ARGV[10])) then return 0 end
local sets = {
  'h:updated_at', ARGV[1],
  p, append(got[2], #ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]),
}
if two then
  sets[5] = 's:' .. ARGV[9]
  sets[6] = append(got[5], #ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14])
end
redis.call('HSET', h, unpack(sets))
return {1, string.sub(saga, 2, -2), got[3], got[4], 0}
"""

STEP_FAST = lua.LOCALS + lua.FAST + _FAST

# FINISH_FAST: _FAST's write of one step, then the saga's end with what it read and in
# its HSET (`scripts.SAGA_UPDATE`'s `stored` and `sets`): two commands fewer.
_FINISH_FAST = """
local h, i = KEYS[1], ARGV[3]
local p = 's:' .. i
local got = redis.call(
  'HMGET', h, 'h:status', p, p .. ':lo', p .. ':le', 'h:created_at', 'h', EXTRAS
)
local saga = got[1]
if not saga or (ARGV[2] ~= '' and saga ~= ARGV[2]) then return 0 end
if not fits(got[2], ARGV[4]) then return 0 end
local sets = {
  'h:updated_at', ARGV[1],
  p, append(got[2], #ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]),
}
local finished = 0
if update_saga(KEYS, ARGV, 8, {saga, got[5], got[6], got[7]}, sets)[1] == 1 then finished = 1 end
return {1, string.sub(saga, 2, -2), got[3], got[4], finished}
"""

FINISH_FAST = (
    lua.LOCALS
    + lua.EXTRAS
    + lua.ALLOWED
    + lua.TERMINAL
    + scores.LUA
    + scripts.SAGA_UPDATE
    + lua.FAST
    + _FINISH_FAST
)
