-- KEYS: status hash. ARGV: group, state, attempts, error ('' = keep), result ('' = none),
-- safety ttl ms, channel ('' = no announcement), completion ttl ms. When every group recorded in
-- the hash is done, the TTL becomes the completion TTL; otherwise it is raised to at least the
-- safety TTL. Returns 0 when the group already succeeded.
local g = ARGV[1]
if redis.call('HGET', KEYS[1], g .. ':state') == 'succeeded' then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[1], g .. ':state', ARGV[2], g .. ':attempts', ARGV[3],
  g .. ':updated_at', string.format('%d', now))
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], g .. ':error', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], g .. ':result', ARGV[5]) end
local ttl = tonumber(ARGV[6])
local all_done = true
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h - 1, 2 do
  if string.sub(h[i], -6) == ':state' and h[i + 1] ~= 'succeeded' and h[i + 1] ~= 'dead' then
    all_done = false
  end
end
if all_done then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
elseif redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], g) end
return 1
