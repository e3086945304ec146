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

/// Parses an XREADGROUP reply for one stream (RESP2 or RESP3; nil = the block timed out).
pub(crate) fn parse_read_reply(v: Value) -> Vec<RawEntry> {
    match v {
        Value::Null => Vec::new(),
        // RESP2: [[key, [entries…]], …]
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    kv.pop().map(parse_entries).unwrap_or_default()
                }
                _ => Vec::new(),
            })
            .collect(),
        // RESP3: {key: [entries…]}
        Value::Map(map) => map.inner().into_values().flat_map(parse_entries).collect(),
        _ => Vec::new(),
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

/// Moves a pending entry to a dead-letter stream and acknowledges it, atomically (R-5.1), fenced
/// by ownership (R-4.11).
///
/// KEYS: stream, dead-letter stream. ARGV: group, entry id, consumer, reason, error, attempts.
/// Returns 1 when moved, -1 when the entry is no longer pending, -2 when another consumer owns it.
const DEAD_LETTER_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return -1 end
if p[1][2] ~= ARGV[3] then return -2 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local args = {'XADD', KEYS[2], '*',
  'dl.group', ARGV[1], 'dl.entry_id', ARGV[2], 'dl.attempts', ARGV[6],
  'dl.reason', ARGV[4], 'dl.error', ARGV[5], 'dl.failed_at', string.format('%d', now),
  'dl.consumer', ARGV[3]}
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e > 0 then
  local f = e[1][2]
  local n = #f
  if n > 7000 then n = 7000; args[#args + 1] = 'dl.truncated'; args[#args + 1] = '1' end
  for i = 1, n do args[#args + 1] = f[i] end
else
  args[#args + 1] = 'dl.missing'; args[#args + 1] = '1'
end
redis.call(unpack(args))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// Deletes a consumer from its group only if it owns no pending entries (R-4.8, R-4.9).
/// KEYS: stream. ARGV: group, consumer. Returns 1 when deleted, 0 when it still owns entries.
const DELETE_IDLE_CONSUMER_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

pub(crate) fn dead_letter_script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::from_lua(DEAD_LETTER_LUA))
}

pub(crate) fn delete_idle_consumer_script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::from_lua(DELETE_IDLE_CONSUMER_LUA))
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
