-- One bounded trim step. KEYS: stream. ARGV: min age ms, min count, max age ms of a stream
-- without groups (-1 = keep), batch, exact step. Returns how many entries were removed.
local len = redis.call('XLEN', KEYS[1])
local budget = len - tonumber(ARGV[2])
if budget <= 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local tms, tseq = nil, nil
if #groups == 0 then
  local max_age = tonumber(ARGV[3])
  if max_age < 0 then return 0 end
  tms, tseq = now_ms() - max_age, 0
end
for _, g in ipairs(groups) do
  local name, last, pending
  for j = 1, #g, 2 do
    if g[j] == 'name' then name = g[j + 1]
    elseif g[j] == 'last-delivered-id' then last = g[j + 1]
    elseif g[j] == 'pending' then pending = g[j + 1] end
  end
  local fms, fseq = parse_id(last)
  fseq = fseq + 1
  if pending and pending > 0 then
    local s = redis.call('XPENDING', KEYS[1], name)
    if s[2] then
      local pms, pseq = parse_id(s[2])
      if id_less(pms, pseq, fms, fseq) then fms, fseq = pms, pseq end
    end
  end
  if tms == nil or id_less(fms, fseq, tms, tseq) then tms, tseq = fms, fseq end
end
local min_age = tonumber(ARGV[1])
if min_age > 0 then
  local keep_from = now_ms() - min_age
  if id_less(keep_from, 0, tms, tseq) then tms, tseq = keep_from, 0 end
end
if tms <= 0 and tseq <= 1 then return 0 end
local limit = math.min(budget, tonumber(ARGV[4]))
local cut = string.format('%d-%d', tms, tseq)
local removed = redis.call('XTRIM', KEYS[1], 'MINID', '~', cut, 'LIMIT', limit)
if removed > 0 then return removed end
-- Only the oldest node straddles the cut (or it holds more than the budget): remove its
-- entries below the cut, reading no more than the exact step.
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(limit, tonumber(ARGV[5])))
local k = 0
for _, e in ipairs(head) do
  local ms, seq = parse_id(e[1])
  if not id_less(ms, seq, tms, tseq) then break end
  k = k + 1
end
if k == 0 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MAXLEN', len - k)
