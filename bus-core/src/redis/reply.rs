//! Parsers for raw Redis replies: the one place that knows their shape.
//!
//! Replies are parsed by hand from [`Value`] instead of typed conversions, because a single odd
//! entry (binary field names, an entry deleted while pending) must not make a whole batch fail.

use std::time::Duration;

use fred::bytes::Bytes;
use fred::types::Value;

use crate::envelope::RawEntry;

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
/// What the take script did.
#[derive(Debug)]
pub(crate) enum TakeReply {
    /// Run attempt `attempt` now; the delivery count `delivery` fences its outcome.
    Run {
        delivery: u32,
        attempt: u32,
        fields: Vec<(Bytes, Bytes)>,
    },
    /// The attempt limit was reached: moved to the dead-letter stream.
    DeadLettered { attempts: u32, event_id: String },
    /// Its retry is due later.
    NotDue(Duration),
    /// Its last attempt ended without an outcome: it must run alone.
    NeedsSolo,
    /// Another consumer owns it, or nobody has it pending any more.
    NotOurs,
    /// Deleted from the stream while pending; acknowledged away.
    Deleted,
}

/// Parses the take script's reply.
pub(crate) fn parse_take_reply(reply: Value) -> crate::error::Result<TakeReply> {
    let Value::Array(parts) = reply else {
        return Err(crate::error::Error::Decode(format!(
            "unexpected take reply {reply:?}"
        )));
    };
    let mut it = parts.into_iter();
    let code = it.next().and_then(|v| v.as_i64()).unwrap_or(-9);
    let mut num = || it.next().and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(match code {
        1 => {
            let delivery = num() as u32;
            let attempt = num() as u32;
            let fields = match it.next() {
                Some(Value::Array(flat)) => parse_flat_fields(flat),
                _ => Vec::new(),
            };
            TakeReply::Run {
                delivery,
                attempt,
                fields,
            }
        }
        0 => {
            let attempts = num() as u32;
            let event_id = it.next().and_then(value_string).unwrap_or_default();
            TakeReply::DeadLettered { attempts, event_id }
        }
        2 => TakeReply::NotDue(Duration::from_millis(num())),
        4 => TakeReply::NeedsSolo,
        -3 => TakeReply::Deleted,
        _ => TakeReply::NotOurs,
    })
}

/// Parses the renew script's reply: `(lost ids, deleted ids)`.
pub(crate) fn parse_renew_reply(reply: Value) -> (Vec<String>, Vec<String>) {
    let list = |v: Option<Value>| -> Vec<String> {
        match v {
            Some(Value::Array(a)) => a.into_iter().filter_map(value_string).collect(),
            _ => Vec::new(),
        }
    };
    match reply {
        Value::Array(parts) => {
            let mut it = parts.into_iter();
            let lost = list(it.next());
            let deleted = list(it.next());
            (lost, deleted)
        }
        _ => (Vec::new(), Vec::new()),
    }
}

/// Parses an extended `XPENDING` reply into `(id, delivery count)` rows.
pub(crate) fn parse_pending_rows(rows: Value) -> Vec<(String, u64)> {
    match rows {
        Value::Array(rows) => rows
            .into_iter()
            .filter_map(|r| match r {
                Value::Array(cols) if cols.len() >= 4 => {
                    let mut cols = cols.into_iter();
                    let id = cols.next().and_then(value_string)?;
                    let count = cols.nth(2).and_then(|v| v.as_u64()).unwrap_or(0);
                    Some((id, count))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) fn parse_read_reply(v: Value) -> Vec<RawEntry> {
    parse_read_reply_keyed(v)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

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
