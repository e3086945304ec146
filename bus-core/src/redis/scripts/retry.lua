-- Schedules a retry of an entry this consumer owns, fenced by owner and delivery count: writes an
-- `r` attempt record (due on Redis's clock) and renews the lease.
--
-- KEYS: stream, record hash. ARGV: group, entry id, consumer, delivery count, delay ms, error,
-- attempts charged so far (this one included). Returns the due time (ms), or -1/-2/-3/-4 as for
-- the dead-letter script.
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c < 0 then
  if c == -1 then redis.call('HDEL', KEYS[2], ARGV[2]) end
  return c
end
if c ~= tonumber(ARGV[4]) then return -3 end
local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
if #r == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return -4
end
local due = now_ms() + tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], make_record('r', tonumber(ARGV[7]), '', due, ARGV[6]))
return due
