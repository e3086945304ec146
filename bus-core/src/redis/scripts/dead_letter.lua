-- Dead-letters an entry this consumer owns, fenced by owner and delivery count.
--
-- KEYS: stream, dead-letter stream, record hash, settled marker. ARGV: group, entry id, consumer,
-- reason, error, expected delivery count (`""` = any), attempts to report, dead-letter stream
-- cap (0 = none). Returns 1 when moved
-- (also when a re-sent call finds its own earlier move), -1 not pending, -2 another owner, -3
-- delivered again since (a newer attempt owns the outcome), -4 deleted while pending
-- (acknowledged away).
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c == -1 then
  local done = recently_settled(KEYS[4], ARGV[3])
  if done then
    if done.kind == 'd' then return -4 end
    return 1
  end
  redis.call('HDEL', KEYS[3], ARGV[2])
  return -1
end
if c < 0 then return c end
if ARGV[6] ~= '' and c ~= tonumber(ARGV[6]) then return -3 end
if not dead_letter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7], ARGV[8]) then
  return -4
end
return 1
