-- Reads new entries from the first of several streams (priority lanes, highest first) that has
-- any, without blocking. KEYS: lane streams. ARGV: group, consumer, count. Returns an XREADGROUP
-- reply, or nil when every lane is empty.
for i = 1, #KEYS do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[i], '>')
  if r then return r end
end
return false
