-- KEYS: delayed set, stream, unmovable stream. ARGV: most to move. Moves every member due by
-- Redis `TIME` into the stream and removes it from the set, in one atomic step. A member that
-- cannot become an entry (not a field list, too many fields, a value `XADD` refuses) is moved
-- aside into the unmovable stream with the error instead, so it never blocks the members due
-- after it. Returns `{moved, moved aside}`.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved, aside = 0, 0
for _, m in ipairs(due) do
  local err = nil
  local ok, fields = pcall(cmsgpack.unpack, m)
  if not ok or type(fields) ~= 'table' or #fields < 2 or #fields % 2 ~= 0 then
    err = 'not a field list'
  else
    local called, r = pcall(function()
      return redis.pcall('XADD', KEYS[2], '*', unpack(fields))
    end)
    if not called then
      err = tostring(r)
    elseif type(r) == 'table' and r.err then
      err = r.err
    end
  end
  if err then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'reason', 'unmovable', 'error', err,
      'due', string.format('%d', now), 'member', m)
    aside = aside + 1
  else
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], m)
end
return {moved, aside}
