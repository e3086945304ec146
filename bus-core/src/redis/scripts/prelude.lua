-- Helpers every script starts with (the script registry in scripts.rs prepends this file).
--
-- `now_ms` is Redis's clock in Unix ms; `parse_id` splits a stream id into (ms, seq) and
-- `id_less` compares two such pairs.
--
-- `owned` reads an entry's pending row and returns its delivery count when `me` owns it, or a
-- negative code: -1 not pending (acknowledged, or never delivered), -2 owned by another consumer.
--
-- Each entry a group has started but not finished may have an *attempt record* in the group's
-- record hash (one per lane), `2|kind|charged|token|due ms|last error`, where kind is `r` (the
-- last attempt failed; retry at `due`), `s`/`m` (an attempt started alone / beside others in its
-- process, with the attempt token of the take that started it), or `l` (released at shutdown
-- before it started). `charged` counts the attempts that count against `max_attempts` before the
-- one the record describes (for `r`: including it). Records written by earlier versions,
-- `due|error`, read as kind `r` charged with every delivery.
--
-- `dead_letter` copies the original fields into the dead-letter stream after the metadata and
-- acknowledges the entry, in the same script; an entry deleted while pending is acknowledged away
-- instead (false), so no empty dead letter is ever written. Either way it leaves a marker
-- (`…:moved:<group>:<entry id>`, 10 minutes) saying who settled the entry and how, so
-- a script re-sent after its reply was lost finds what the first run did (`recently_settled`).
local function owned(stream, group, id, me)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 0 then return -1 end
  if p[1][2] ~= me then return -2 end
  return tonumber(p[1][4])
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function id_less(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local function parse_record(rec)
  if not rec then return nil end
  local kind, charged, token, due, err = string.match(rec, '^2|(%a)|(%d+)|([^|]*)|(%d+)|(.*)$')
  if kind then
    return {kind = kind, charged = tonumber(charged), token = token, due = tonumber(due), err = err}
  end
  local d, e = string.match(rec, '^(%d+)|(.*)$')
  if d then return {kind = 'r', charged = nil, token = '', due = tonumber(d), err = e} end
  return {kind = '?', charged = nil, token = '', due = 0, err = ''}
end
local function make_record(kind, charged, token, due, err)
  return '2|' .. kind .. '|' .. string.format('%d', charged) .. '|' .. token .. '|' ..
    string.format('%d', due) .. '|' .. err
end
local function dead_letter(stream, dlq, records, marker, group, id, me, reason, err, attempts, cap)
  local e = redis.call('XRANGE', stream, id, id)
  redis.call('XACK', stream, group, id)
  redis.call('HDEL', records, id)
  if #e == 0 then
    redis.call('SET', marker, 'd|' .. me .. '|0|', 'EX', 600)
    return false
  end
  local args = {'XADD', dlq}
  if cap and tonumber(cap) > 0 then
    args[#args + 1] = 'MAXLEN'; args[#args + 1] = cap
  end
  args[#args + 1] = '*'
  local meta = {
    'dl.group', group, 'dl.entry_id', id, 'dl.attempts', tostring(attempts),
    'dl.reason', reason, 'dl.error', err, 'dl.failed_at', string.format('%d', now_ms()),
    'dl.consumer', me}
  for _, v in ipairs(meta) do args[#args + 1] = v end
  local event_id = ''
  local f = e[1][2]
  -- The event id: field `e` (envelope version 2: `2 <id> …`) or field `id` (version 1).
  for i = 1, #f - 1, 2 do
    if f[i] == 'e' then event_id = string.match(f[i + 1], '^2 ([^ \n]+) ') or ''; break end
    if f[i] == 'id' then event_id = f[i + 1]; break end
  end
  local n = #f
  if n > 7000 then n = 7000; args[#args + 1] = 'dl.truncated'; args[#args + 1] = '1' end
  for i = 1, n do args[#args + 1] = f[i] end
  redis.call(unpack(args))
  redis.call('SET', marker, 'm|' .. me .. '|' .. tostring(attempts) .. '|' .. event_id, 'EX', 600)
  return event_id
end
local function recently_settled(marker, me)
  local v = redis.call('GET', marker)
  if not v then return nil end
  local kind, who, attempts, event_id = string.match(v, '^(%a)|([^|]*)|(%d+)|(.*)$')
  if who ~= me then return nil end
  return {kind = kind, attempts = tonumber(attempts), event_id = event_id}
end
