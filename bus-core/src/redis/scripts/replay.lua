-- Re-publishes dead letters to their group only: the original fields go back into the
-- stream as a new entry addressed to the group (field `to`), so other groups skip it and the
-- attempt count starts again; the dead letter is deleted in the same step.
-- KEYS: stream, dead-letter stream. ARGV: group, dead-letter ids…  Returns how many were replayed.
local n = 0
for i = 2, #ARGV do
  local e = redis.call('XRANGE', KEYS[2], ARGV[i], ARGV[i])
  if #e > 0 then
    local f = e[1][2]
    local args = {'XADD', KEYS[1], '*'}
    local has = false
    for j = 1, #f, 2 do
      local k = f[j]
      if string.sub(k, 1, 3) ~= 'dl.' and k ~= 'to' then
        args[#args + 1] = k; args[#args + 1] = f[j + 1]; has = true
      end
    end
    if has then
      args[#args + 1] = 'to'; args[#args + 1] = ARGV[1]
      redis.call(unpack(args))
    end
    redis.call('XDEL', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
