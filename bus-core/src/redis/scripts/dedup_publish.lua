-- De-duplicated publish: the first publish with a key within its window writes the entry and
-- records `event id|entry id` under the key with the window as TTL, in one script. The key is
-- claimed first (`SET NX PX`), so a window Redis refuses fails the script before anything is
-- written, and a failed `XADD` gives the key back: a retry can never publish twice.
-- KEYS: dedup key, stream. ARGV: window ms, event id, field/value pairs…
-- Returns `{1, "event|entry"}` when written, `{0, "event|entry"}` of the first publish otherwise.
if not redis.call('SET', KEYS[1], ARGV[2] .. '|', 'NX', 'PX', tonumber(ARGV[1])) then
  return {0, redis.call('GET', KEYS[1])}
end
local id = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 3))
if type(id) == 'table' and id.err then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(id.err)
end
local v = ARGV[2] .. '|' .. id
redis.call('SET', KEYS[1], v, 'KEEPTTL')
return {1, v}
