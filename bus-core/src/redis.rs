//! Reply parsing and Lua scripts: the one place that knows the shape of raw Redis replies.
//!
//! Replies are parsed by hand from [`Value`] instead of typed conversions, because a single odd
//! entry (binary field names, an entry deleted while pending) must not make a whole batch fail
//! (FRED-NOTES §1, pitfalls 1 and 2).

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
        Value::Array(flat) => {
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((
                    value_bytes(k).unwrap_or_default(),
                    value_bytes(v).unwrap_or_default(),
                ));
            }
            Some(out)
        }
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

/// Creates a consumer group, accepting one that exists already (R-4.2).
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
/// `dead_letter` copies the original fields into the dead-letter stream after the metadata and
/// acknowledges the entry, in the same script (R-5.1).
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
local function dead_letter(stream, dlq, retries, group, id, me, reason, err, attempts)
  local args = {'XADD', dlq, '*',
    'dl.group', group, 'dl.entry_id', id, 'dl.attempts', tostring(attempts),
    'dl.reason', reason, 'dl.error', err, 'dl.failed_at', string.format('%d', now_ms()),
    'dl.consumer', me}
  local e = redis.call('XRANGE', stream, id, id)
  local event_id = ''
  if #e > 0 then
    local f = e[1][2]
    for i = 1, #f - 1, 2 do
      if f[i] == 'id' then event_id = f[i + 1]; break end
    end
    local n = #f
    if n > 7000 then n = 7000; args[#args + 1] = 'dl.truncated'; args[#args + 1] = '1' end
    for i = 1, n do args[#args + 1] = f[i] end
  else
    args[#args + 1] = 'dl.missing'; args[#args + 1] = '1'
  end
  redis.call(unpack(args))
  redis.call('XACK', stream, group, id)
  redis.call('HDEL', retries, id)
  return event_id
end
"#;

/// Dead-letters an entry this consumer owns, fenced by owner and delivery count (R-4.11).
///
/// KEYS: stream, dead-letter stream, retry hash. ARGV: group, entry id, consumer, reason, error,
/// expected delivery count (`""` = any). Returns 1 when moved, -1 not pending, -2 another owner,
/// -3 delivered again since (a newer attempt owns the outcome).
const DEAD_LETTER_LUA: &str = r#"
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c < 0 then return c end
if ARGV[6] ~= '' and c ~= tonumber(ARGV[6]) then return -3 end
dead_letter(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], c)
return 1
"#;

/// Schedules a retry of an entry this consumer owns, fenced by owner and delivery count: records
/// `due|error` in the retry hash (due on Redis's clock) and renews the lease.
///
/// KEYS: stream, retry hash. ARGV: group, entry id, consumer, delivery count, delay ms, error.
/// Returns the due time (ms), or -1/-2/-3 as for the dead-letter script.
const RETRY_LUA: &str = r#"
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c < 0 then return c end
if c ~= tonumber(ARGV[4]) then return -3 end
local due = now_ms() + tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', due) .. '|' .. ARGV[6])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return due
"#;

/// Takes an entry this consumer holds (claimed or waiting for its retry) for a new attempt: checks
/// the attempt limit first (R-4.5) and dead-letters instead of running when it is used up;
/// otherwise claims it with a delivery-count bump and returns the entry.
///
/// KEYS: stream, dead-letter stream, retry hash. ARGV: group, entry id, consumer, max attempts.
/// Returns `{1, count, fields}` to run, `{0, attempts, event id}` when dead-lettered, `{-1}`/`{-2}` when not
/// ours, `{-3}` when the entry was deleted while pending (acknowledged away).
const TAKE_LUA: &str = r#"
local c = owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if c < 0 then return {c} end
if c + 1 > tonumber(ARGV[4]) then
  local info = redis.call('HGET', KEYS[3], ARGV[2])
  local err = 'no outcome: the worker stopped or lost its lease during the attempt'
  if info then
    local sep = string.find(info, '|', 1, true)
    if sep then err = string.sub(info, sep + 1) end
  end
  local event_id = dead_letter(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], 'max_attempts', err, c)
  return {0, c, event_id}
end
local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2])
if #e == 0 or not e[1] or not e[1][2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return {-3}
end
return {1, c + 1, e[1][2]}
"#;

/// Renews the leases of entries this consumer still owns (XCLAIM … JUSTID resets the idle time
/// without counting a delivery) and returns the ids it no longer owns (R-4.7, R-8.5).
///
/// KEYS: stream. ARGV: group, consumer, ids…
const RENEW_LUA: &str = r#"
local lost = {}
for i = 3, #ARGV do
  local c = owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2])
  if c < 0 then
    lost[#lost + 1] = ARGV[i]
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
"#;

/// Makes entries this consumer still owns reclaimable at once (R-4.8): idle far beyond any
/// visibility timeout, no delivery counted. Entries another consumer owns are left alone.
///
/// KEYS: stream. ARGV: group, consumer, ids…  Returns how many were released.
const RELEASE_LUA: &str = r#"
local n = 0
for i = 3, #ARGV do
  if owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) >= 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', 4294967295, 'JUSTID')
    n = n + 1
  end
end
return n
"#;

/// Deletes a consumer from its group only if it owns no pending entries (R-4.8, R-4.9), and only
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

/// Re-publishes dead letters to their group only (R-5.3): the original fields go back into the
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

/// De-duplicated publish (R-3.5): the first publish with a key within its window writes the entry
/// and records `event id|entry id` under the key with the window as TTL, in one script.
/// KEYS: dedup key, stream. ARGV: window ms, event id, field/value pairs…
/// Returns `{1, "event|entry"}` when written, `{0, "event|entry"}` of the first publish otherwise.
const DEDUP_PUBLISH_LUA: &str = r#"
local prev = redis.call('GET', KEYS[1])
if prev then return {0, prev} end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
local v = ARGV[2] .. '|' .. id
redis.call('SET', KEYS[1], v, 'PX', tonumber(ARGV[1]))
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
