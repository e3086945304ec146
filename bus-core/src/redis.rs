//! Reply parsing and Lua scripts: the one place that knows the shape of raw Redis replies.
//!
//! Replies are parsed by hand from [`Value`] instead of typed conversions, because a single odd
//! entry (binary field names, an entry deleted while pending) must not make a whole batch fail.

use std::sync::OnceLock;

use fred::bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::envelope::RawEntry;
use crate::error::{Error, Result};

/// Bytes of a bulk-string-like value.
pub(crate) fn value_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::String(s) => Some(s.into_inner()),
        Value::Bytes(b) => Some(b),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        Value::Double(d) => Some(Bytes::from(d.to_string())),
        _ => None,
    }
}

pub(crate) fn value_string(v: Value) -> Option<String> {
    value_bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// Parses a flat field list `[f1, v1, f2, v2, …]` (binary-safe; an odd last element is dropped).
pub(crate) fn parse_flat_fields(flat: Vec<Value>) -> Vec<(Bytes, Bytes)> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((
            value_bytes(k).unwrap_or_default(),
            value_bytes(v).unwrap_or_default(),
        ));
    }
    out
}

/// Parses one entry `[id, [f1, v1, …] | nil]`.
fn parse_entry(v: Value) -> Option<RawEntry> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let id = value_string(parts.pop()?)?;
    let fields = match fields {
        Value::Null => None,
        Value::Array(flat) => Some(parse_flat_fields(flat)),
        Value::Map(map) => Some(
            map.inner()
                .into_iter()
                .map(|(k, v)| {
                    (
                        Bytes::copy_from_slice(k.as_bytes()),
                        value_bytes(v).unwrap_or_default(),
                    )
                })
                .collect(),
        ),
        _ => return None,
    };
    Some(RawEntry { id, fields })
}

/// Parses a list of entries (XRANGE reply, or the entries part of an XREADGROUP reply).
pub(crate) fn parse_entries(v: Value) -> Vec<RawEntry> {
    match v {
        Value::Array(entries) => entries
            .into_iter()
            .filter_map(|e| {
                let parsed = parse_entry(e);
                if parsed.is_none() {
                    tracing::error!("skipping a stream entry with an unexpected reply shape");
                }
                parsed
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses an XREADGROUP reply for any number of streams into `(stream key, entry)` pairs.
pub(crate) fn parse_read_reply_keyed(v: Value) -> Vec<(String, RawEntry)> {
    let keyed = |key: Value, entries: Value| -> Vec<(String, RawEntry)> {
        let key = value_string(key).unwrap_or_default();
        parse_entries(entries)
            .into_iter()
            .map(|e| (key.clone(), e))
            .collect()
    };
    match v {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop().unwrap_or(Value::Null);
                    let key = kv.pop().unwrap_or(Value::Null);
                    keyed(key, entries)
                }
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .flat_map(|(k, entries)| {
                keyed(
                    Value::from(k.as_str().map(str::to_owned).unwrap_or_default()),
                    entries,
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses an XREADGROUP reply, dropping the stream names (RESP2 or RESP3; nil = the block timed
/// out).
#[cfg(test)]
pub(crate) fn parse_read_reply(v: Value) -> Vec<RawEntry> {
    parse_read_reply_keyed(v)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// Escapes the glob characters of `s` for a `SCAN MATCH` pattern, so names are matched literally.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every key matching a glob `pattern`, by a `SCAN` cursor loop (bounded work per call).
pub(crate) async fn scan_keys(client: &Client, pattern: &str) -> Result<Vec<String>> {
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let reply: Value = client
            .custom(
                fred::types::CustomCommand::new_static("SCAN", None, false),
                vec![
                    cursor,
                    "MATCH".into(),
                    pattern.to_owned(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await?;
        let (next, keys): (String, Vec<String>) = reply.convert()?;
        out.extend(keys);
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Creates a consumer group, accepting one that exists already.
pub(crate) async fn ensure_group(
    client: &Client,
    key: &str,
    group: &str,
    start: &str,
) -> Result<bool> {
    match client
        .xgroup_create::<Value, _, _, _>(key, group, start, true)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// KEYS: old key, new key. Renames old to new when only old exists; returns 1 when renamed.
const ADOPT_LUA: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"#;

/// Moves a key written under an older key layout to its new name, unless the new one exists.
/// Returns whether it moved.
pub(crate) async fn adopt_renamed_key(client: &Client, old: &str, new: &str) -> Result<bool> {
    static S: OnceLock<Script> = OnceLock::new();
    let script = S.get_or_init(|| Script::from_lua(ADOPT_LUA));
    let moved = eval(script, client, vec![old.to_owned(), new.to_owned()], vec![]).await?;
    Ok(moved.as_u64() == Some(1))
}

/// Runs a script by SHA, loading it when the server does not know it (after a restart or
/// `SCRIPT FLUSH`).
pub(crate) async fn eval(
    script: &Script,
    client: &Client,
    keys: Vec<String>,
    args: Vec<Value>,
) -> Result<Value> {
    script
        .evalsha_with_reload::<Value, _, _>(client, keys, args)
        .await
        .map_err(Error::from)
}

/// Lua helpers shared by the scripts below (prepended to each).
///
/// `owned` reads an entry's pending row and returns its delivery count when `me` owns it, or a
/// negative code: -1 not pending (acknowledged, or never delivered), -2 owned by another consumer.
///
/// Each entry a group has started but not finished may have an *attempt record* in the group's
/// record hash (one per lane), `2|kind|charged|token|due ms|last error`, where kind is `r` (the
/// last attempt failed; retry at `due`), `s`/`m` (an attempt started alone / beside others in its
/// process, with the attempt token of the take that started it), or `l` (released at shutdown
/// before it started). `charged` counts the attempts that count against `max_attempts` before the
/// one the record describes (for `r`: including it). Records written by earlier versions,
/// `due|error`, read as kind `r` charged with every delivery.
///
/// `dead_letter` copies the original fields into the dead-letter stream after the metadata and
/// acknowledges the entry, in the same script; an entry deleted while pending is acknowledged away
/// instead (false), so no empty dead letter is ever written. Either way it leaves a marker
/// (`…:moved:<group>:<entry id>`, 10 minutes) saying who settled the entry and how, so
/// a script re-sent after its reply was lost finds what the first run did (`recently_settled`).
const LUA_PRELUDE: &str = r#"
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
  for i = 1, #f - 1, 2 do
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
"#;

/// Dead-letters an entry this consumer owns, fenced by owner and delivery count.
///
/// KEYS: stream, dead-letter stream, record hash, settled marker. ARGV: group, entry id, consumer,
/// reason, error, expected delivery count (`""` = any), attempts to report, dead-letter stream
/// cap (0 = none). Returns 1 when moved
/// (also when a re-sent call finds its own earlier move), -1 not pending, -2 another owner, -3
/// delivered again since (a newer attempt owns the outcome), -4 deleted while pending
/// (acknowledged away).
const DEAD_LETTER_LUA: &str = r#"
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
"#;

/// Schedules a retry of an entry this consumer owns, fenced by owner and delivery count: writes an
/// `r` attempt record (due on Redis's clock) and renews the lease.
///
/// KEYS: stream, record hash. ARGV: group, entry id, consumer, delivery count, delay ms, error,
/// attempts charged so far (this one included). Returns the due time (ms), or -1/-2/-3/-4 as for
/// the dead-letter script.
const RETRY_LUA: &str = r#"
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c < 0 then
  if c == -1 then redis.call('HDEL', KEYS[2], ARGV[2]) end
  return c
end
if c ~= tonumber(ARGV[4]) then return -3 end
local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
if #r == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return -4
end
local due = now_ms() + tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], make_record('r', tonumber(ARGV[7]), '', due, ARGV[6]))
return due
"#;

/// Takes an entry this consumer holds (claimed, read, or waiting for its retry) for a new attempt.
///
/// Idempotent per attempt token: a take re-sent after its reply was lost finds its own `s`/`m`
/// record and returns the same attempt instead of counting another delivery. An entry whose last
/// attempt ended without an outcome (no record after a delivery, or an `s`/`m` record) is a
/// suspect: it must run alone in its process (ARGV solo = 1), else the script answers `{4}`. Only
/// attempts that ran alone or ended with an outcome are charged. The attempt limit is checked
/// before running; an entry whose retry is not due yet is left alone (`{2, ms left}`).
///
/// KEYS: stream, dead-letter stream, record hash, settled marker. ARGV: group, entry id,
/// consumer, max attempts, attempt token, solo (0/1), fresh (1 = the caller knows the last
/// delivery never started), dead-letter stream cap (0 = none).
/// Returns `{1, delivery count, attempt, fields}` to run, `{0, attempts, event id}` when
/// dead-lettered, `{2, ms}` when not due, `{4}` when it must run alone, `{-1}`/`{-2}` when not
/// ours, `{-3}` when deleted while pending (acknowledged away).
const TAKE_LUA: &str = r#"
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c == -1 then
  local done = recently_settled(KEYS[4], ARGV[3])
  if done then
    if done.kind == 'd' then return {-3} end
    return {0, done.attempts, done.event_id}
  end
  redis.call('HDEL', KEYS[3], ARGV[2])
  return {-1}
end
if c < 0 then return {c} end
local rec = parse_record(redis.call('HGET', KEYS[3], ARGV[2]))
local charged, unfinished, err = 0, false, ''
if rec == nil then
  charged = c - 1
  unfinished = ARGV[7] ~= '1'
elseif rec.kind == 's' or rec.kind == 'm' then
  if rec.token == ARGV[5] then
    local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
    if #e == 0 then
      redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
      redis.call('HDEL', KEYS[3], ARGV[2])
      return {-3}
    end
    return {1, c, rec.charged + 1, e[1][2]}
  end
  charged = rec.charged
  if rec.kind == 's' then charged = charged + 1 end
  unfinished = true
  err = rec.err
else
  charged = rec.charged or c
  err = rec.err
end
if charged >= tonumber(ARGV[4]) then
  if unfinished then
    err = 'no outcome: the worker died, stalled or lost its lease while running the event alone'
  end
  local ev = dead_letter(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], 'max_attempts', err, charged, ARGV[8])
  if ev == false then return {-3} end
  return {0, charged, ev}
end
if unfinished and ARGV[6] ~= '1' then return {4} end
if rec and rec.kind == 'r' then
  local now = now_ms()
  if rec.due > now then return {2, rec.due - now} end
end
local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2])
if #e == 0 or not e[1] or not e[1][2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return {-3}
end
local kind = 'm'
if ARGV[6] == '1' then kind = 's' end
redis.call('HSET', KEYS[3], ARGV[2], make_record(kind, charged, ARGV[5], 0, err))
return {1, c + 1, charged + 1, e[1][2]}
"#;

/// Renews the leases of entries this consumer still owns (XCLAIM … JUSTID resets the idle time
/// without counting a delivery). Returns `{lost ids, deleted ids}`: entries another consumer owns
/// or nobody has pending any more, and entries deleted from the stream while pending (Redis 7
/// drops those from the pending list on XCLAIM; their records go too).
///
/// KEYS: stream, record hash. ARGV: group, consumer, ids…
const RENEW_LUA: &str = r#"
local lost, deleted = {}, {}
for i = 3, #ARGV do
  local c = owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2])
  if c < 0 then
    lost[#lost + 1] = ARGV[i]
    if c == -1 then redis.call('HDEL', KEYS[2], ARGV[i]) end
  else
    local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    if #r == 0 then
      deleted[#deleted + 1] = ARGV[i]
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
  end
end
return {lost, deleted}
"#;

/// Makes entries this consumer still owns reclaimable at once: idle far beyond any visibility
/// timeout, no delivery counted. Entries another consumer owns are left alone. Each id comes with
/// a record to write (`''` = keep the record as it is), so the next taker knows how the entry
/// was left (not started, or abandoned while running).
///
/// KEYS: stream, record hash. ARGV: group, consumer, then id, record pairs. Returns how many were
/// released.
const RELEASE_LUA: &str = r#"
local n = 0
for i = 3, #ARGV - 1, 2 do
  local c = owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2])
  if c >= 0 then
    if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', 4294967295, 'JUSTID')
    n = n + 1
  elseif c == -1 then
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return n
"#;

/// Deletes a consumer from its group only if it owns no pending entries, and only
/// if it has been idle at least ARGV[3] ms (0 = any).
/// KEYS: stream. ARGV: group, consumer, min idle ms. Returns 1 when deleted, 0 otherwise.
const DELETE_IDLE_CONSUMER_LUA: &str = r#"
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
"#;

/// Re-publishes dead letters to their group only: the original fields go back into the
/// stream as a new entry addressed to the group (field `to`), so other groups skip it and the
/// attempt count starts again; the dead letter is deleted in the same step.
/// KEYS: stream, dead-letter stream. ARGV: group, dead-letter ids…  Returns how many were replayed.
const REPLAY_LUA: &str = r#"
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
"#;

/// De-duplicated publish: the first publish with a key within its window writes the entry and
/// records `event id|entry id` under the key with the window as TTL, in one script. The key is
/// claimed first (`SET NX PX`), so a window Redis refuses fails the script before anything is
/// written, and a failed `XADD` gives the key back: a retry can never publish twice.
/// KEYS: dedup key, stream. ARGV: window ms, event id, field/value pairs…
/// Returns `{1, "event|entry"}` when written, `{0, "event|entry"}` of the first publish otherwise.
const DEDUP_PUBLISH_LUA: &str = r#"
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
"#;

/// Reads new entries from the first of several streams (priority lanes, highest first) that has
/// any, without blocking. KEYS: lane streams. ARGV: group, consumer, count. Returns an XREADGROUP
/// reply, or nil when every lane is empty.
const LANE_READ_LUA: &str = r#"
for i = 1, #KEYS do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[i], '>')
  if r then return r end
end
return false
"#;

macro_rules! script {
    ($name:ident, $body:ident) => {
        pub(crate) fn $name() -> &'static Script {
            static S: OnceLock<Script> = OnceLock::new();
            S.get_or_init(|| Script::from_lua(format!("{LUA_PRELUDE}{}", $body)))
        }
    };
}

script!(dead_letter_script, DEAD_LETTER_LUA);
script!(retry_script, RETRY_LUA);
script!(take_script, TAKE_LUA);
script!(renew_script, RENEW_LUA);
script!(release_script, RELEASE_LUA);
script!(delete_idle_consumer_script, DELETE_IDLE_CONSUMER_LUA);
script!(replay_script, REPLAY_LUA);
script!(dedup_publish_script, DEDUP_PUBLISH_LUA);
script!(lane_read_script, LANE_READ_LUA);

/// Parses an XAUTOCLAIM … JUSTID reply: `(next cursor, claimed ids, deleted ids)`. Redis 6.2
/// sends no deleted list.
pub(crate) fn parse_autoclaim_justid(v: Value) -> Option<(String, Vec<String>, Vec<String>)> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    if parts.len() < 2 {
        return None;
    }
    let deleted = if parts.len() >= 3 { parts.pop() } else { None };
    let ids = parts.pop()?;
    let cursor = value_string(parts.pop()?)?;
    let strings = |v: Value| -> Vec<String> {
        match v {
            Value::Array(a) => a.into_iter().filter_map(value_string).collect(),
            _ => Vec::new(),
        }
    };
    Ok::<_, ()>((
        cursor,
        strings(ids),
        deleted.map(strings).unwrap_or_default(),
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn parses_resp2_read_reply_with_deleted_and_binary_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("k"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("a"), s("b")])]),
                Value::Array(vec![s("2-0"), Value::Null]),
                Value::Array(vec![
                    s("3-0"),
                    Value::Array(vec![
                        Value::Bytes(Bytes::from_static(&[0xff])),
                        Value::Integer(5),
                    ]),
                ]),
                Value::Integer(9), // junk: skipped, no panic
            ]),
        ])]);
        let entries = parse_read_reply(reply);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields.as_deref(),
            Some(&[(Bytes::from_static(b"a"), Bytes::from_static(b"b"))][..])
        );
        assert!(entries[1].fields.is_none());
        assert_eq!(
            entries[2].fields.as_deref(),
            Some(&[(Bytes::from_static(&[0xff]), Bytes::from_static(b"5"))][..])
        );
    }

    #[test]
    fn nil_reply_is_an_empty_batch() {
        assert!(parse_read_reply(Value::Null).is_empty());
    }
}
