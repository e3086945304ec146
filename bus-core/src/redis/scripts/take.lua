-- Takes an entry this consumer holds (claimed, read, or waiting for its retry) for a new attempt.
--
-- Idempotent per attempt token: a take re-sent after its reply was lost finds its own `s`/`m`
-- record and returns the same attempt instead of counting another delivery. An entry whose last
-- attempt ended without an outcome (no record after a delivery, or an `s`/`m` record) is a
-- suspect: it must run alone in its process (ARGV solo = 1), else the script answers `{4}`. Only
-- attempts that ran alone or ended with an outcome are charged. The attempt limit is checked
-- before running; an entry whose retry is not due yet is left alone (`{2, ms left}`).
--
-- KEYS: stream, dead-letter stream, record hash, settled marker. ARGV: group, entry id,
-- consumer, max attempts, attempt token, solo (0/1), fresh (1 = the caller knows the last
-- delivery never started), dead-letter stream cap (0 = none).
-- Returns `{1, delivery count, attempt, fields}` to run, `{0, attempts, event id}` when
-- dead-lettered, `{2, ms}` when not due, `{4}` when it must run alone, `{-1}`/`{-2}` when not
-- ours, `{-3}` when deleted while pending (acknowledged away).
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c == -1 then
  local done = recently_settled(KEYS[4], ARGV[3])
  if done then
    if done.kind == 'd' then return {-3} end
    return {0, done.attempts, done.event_id}
  end
  redis.call('HDEL', KEYS[3], ARGV[2])
  return {-1}
end
if c < 0 then return {c} end
local rec = parse_record(redis.call('HGET', KEYS[3], ARGV[2]))
local charged, unfinished, err = 0, false, ''
if rec == nil then
  charged = c - 1
  unfinished = ARGV[7] ~= '1'
elseif rec.kind == 's' or rec.kind == 'm' then
  if rec.token == ARGV[5] then
    local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
    if #e == 0 then
      redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
      redis.call('HDEL', KEYS[3], ARGV[2])
      return {-3}
    end
    return {1, c, rec.charged + 1, e[1][2]}
  end
  charged = rec.charged
  if rec.kind == 's' then charged = charged + 1 end
  unfinished = true
  err = rec.err
else
  charged = rec.charged or c
  err = rec.err
end
if charged >= tonumber(ARGV[4]) then
  if unfinished then
    err = 'no outcome: the worker died, stalled or lost its lease while running the event alone'
  end
  local ev = dead_letter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], 'max_attempts', err, charged, ARGV[8])
  if ev == false then return {-3} end
  return {0, charged, ev}
end
if unfinished and ARGV[6] ~= '1' then return {4} end
if rec and rec.kind == 'r' then
  local now = now_ms()
  if rec.due > now then return {2, rec.due - now} end
end
local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2])
if #e == 0 or not e[1] or not e[1][2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return {-3}
end
local kind = 'm'
if ARGV[6] == '1' then kind = 's' end
redis.call('HSET', KEYS[3], ARGV[2], make_record(kind, charged, ARGV[5], 0, err))
return {1, c + 1, charged + 1, e[1][2]}
