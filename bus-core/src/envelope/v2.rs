//! Version 2: the envelope in one field `e` = `2 <id> <ts> <codec> <type>`.
//!
//! One text field instead of five keeps the per-entry cost for Redis (arguments parsed, values
//! stored) close to that of the payload alone, and stays readable in `redis-cli` and easy to
//! parse in any language. The type name comes last so that it is everything after the fourth
//! space.

use fred::bytes::Bytes;
use fred::types::{Key, Value};

use super::{codec, millis, utf8, Meta, Parts};
use crate::error::{Error, Result};

const F_META: &str = "e";

/// The `e` field and room for the payload and `headers` more.
pub(super) fn encode(p: &Parts<'_>, headers: usize) -> Vec<(Key, Value)> {
    let mut fields = Vec::with_capacity(2 + headers);
    let meta = format!(
        "2 {} {} {} {}",
        p.event_id,
        p.published_at_ms,
        p.codec.tag(),
        p.event_type
    );
    fields.push((Key::from_static_str(F_META), Value::from(meta)));
    fields
}

/// The value of the `e` field, if the entry has one.
pub(super) fn meta_field(fields: &[(Bytes, Bytes)]) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(k, _)| k.as_ref() == F_META.as_bytes())
        .map(|(_, v)| v.as_ref())
}

/// The five space-separated parts: version, id, time, codec, type.
fn split(meta: &[u8]) -> Result<[&[u8]; 5]> {
    let mut parts = meta.splitn(5, |b| *b == b' ');
    let mut next = || parts.next().unwrap_or_default();
    let all = [next(), next(), next(), next(), next()];
    if all[0] != b"2" {
        return Err(Error::Decode(format!(
            "unsupported envelope version {:?}",
            String::from_utf8_lossy(all[0])
        )));
    }
    if all[1..].iter().any(|p| p.is_empty()) {
        return Err(Error::Decode(
            "field e must be `2 <id> <ts> <codec> <type>`".into(),
        ));
    }
    Ok(all)
}

pub(super) fn identify(meta: &[u8]) -> (Option<String>, Option<String>) {
    match split(meta) {
        Ok([_, id, _, _, ty]) => (utf8("e", id).ok(), utf8("e", ty).ok()),
        Err(_) => (None, None),
    }
}

pub(super) fn decode(meta: &[u8]) -> Result<Meta> {
    let [_, id, ts, ct, ty] = split(meta)?;
    Ok(Meta {
        event_id: utf8("e (event id)", id)?,
        event_type: utf8("e (type)", ty)?,
        published_at_ms: millis("the time in field e", ts)?,
        codec: codec(ct)?,
    })
}
