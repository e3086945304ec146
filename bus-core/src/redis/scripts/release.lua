-- Makes entries this consumer still owns reclaimable at once: idle far beyond any visibility
-- timeout, no delivery counted. Entries another consumer owns are left alone. Each id comes with
-- a record to write (`''` = keep the record as it is), so the next taker knows how the entry
-- was left (not started, or abandoned while running).
--
-- KEYS: stream, record hash. ARGV: group, consumer, then id, record pairs. Returns how many were
-- released.
local n = 0
for i = 3, #ARGV - 1, 2 do
  local c = owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2])
  if c >= 0 then
    if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', 4294967295, 'JUSTID')
    n = n + 1
  elseif c == -1 then
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return n
