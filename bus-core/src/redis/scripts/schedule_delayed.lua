-- KEYS: delayed set. ARGV: delay ms (or `at:<unix ms>` for an absolute time), member.
-- Returns the due time.
local due
if string.sub(ARGV[1], 1, 3) == 'at:' then
  due = tonumber(string.sub(ARGV[1], 4))
else
  due = now_ms() + tonumber(ARGV[1])
end
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
