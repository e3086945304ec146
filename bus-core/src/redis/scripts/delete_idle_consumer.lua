-- Deletes a consumer from its group only if it owns no pending entries, and only
-- if it has been idle at least ARGV[3] ms (0 = any).
-- KEYS: stream. ARGV: group, consumer, min idle ms. Returns 1 when deleted, 0 otherwise.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
if tonumber(ARGV[3]) > 0 then
  local cs = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
  for _, c in ipairs(cs) do
    local name, idle = nil, nil
    for j = 1, #c, 2 do
      if c[j] == 'name' then name = c[j + 1] elseif c[j] == 'idle' then idle = c[j + 1] end
    end
    if name == ARGV[2] and idle and idle < tonumber(ARGV[3]) then return 0 end
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
