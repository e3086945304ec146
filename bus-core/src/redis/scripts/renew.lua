-- Renews the leases of entries this consumer still owns (XCLAIM … JUSTID resets the idle time
-- without counting a delivery). Returns `{lost ids, deleted ids}`: entries another consumer owns
-- or nobody has pending any more, and entries deleted from the stream while pending (Redis 7
-- drops those from the pending list on XCLAIM; their records go too).
--
-- KEYS: stream, record hash. ARGV: group, consumer, ids…
local lost, deleted = {}, {}
for i = 3, #ARGV do
  local c = owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2])
  if c < 0 then
    lost[#lost + 1] = ARGV[i]
    if c == -1 then redis.call('HDEL', KEYS[2], ARGV[i]) end
  else
    local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    if #r == 0 then
      deleted[#deleted + 1] = ARGV[i]
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
  end
end
return {lost, deleted}
