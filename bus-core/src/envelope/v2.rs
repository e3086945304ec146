//! Version 2: the whole entry in one field `e` = `2 <id> <ts> <codec> <type>\n<payload>`.
//!
//! Redis's work per entry grows with its fields: every `XADD` parses and stores one value per
//! field and every `XREADGROUP` writes them all back. One field keeps both close to what the
//! payload alone costs, and stays easy to read in any language: a text line, a line feed, the
//! payload bytes. The type name comes last on the line so that it is everything after the fourth
//! space (a type name holding a line feed is written as version 1 instead, see `super::encode`).

use fred::bytes::{BufMut, Bytes, BytesMut};
use fred::types::{Key, Value};

use super::{codec, field, millis, utf8, Meta, Parts};
use crate::error::{Error, Result};

const F_ENTRY: &str = "e";

/// The `e` field (envelope line and payload) and room for `headers` more.
pub(super) fn encode(p: Parts<'_>) -> Vec<(Key, Value)> {
    let mut fields = Vec::with_capacity(1 + p.headers.len());
    let ts = p.published_at_ms.to_string();
    let (id, ty, ct) = (p.event_id, p.event_type, p.codec.tag());
    let mut value =
        BytesMut::with_capacity(6 + id.len() + ts.len() + ct.len() + ty.len() + p.payload.len());
    let line = [
        b"2 ",
        id.as_bytes(),
        b" ",
        ts.as_bytes(),
        b" ",
        ct.as_bytes(),
        b" ",
    ];
    for part in line.into_iter().chain([ty.as_bytes(), b"\n", &p.payload]) {
        value.put_slice(part);
    }
    fields.push((Key::from_static_str(F_ENTRY), Value::Bytes(value.freeze())));
    fields
}

/// The value of the `e` field, if the entry has one.
pub(super) fn entry_field(fields: &[(Bytes, Bytes)]) -> Option<&Bytes> {
    field(fields, F_ENTRY)
}

/// The five space-separated parts of the envelope line (version, id, time, codec, type) and
/// where the payload starts.
fn split(value: &[u8]) -> Result<([&[u8]; 5], usize)> {
    let line_end = value.iter().position(|b| *b == b'\n');
    let line = &value[..line_end.unwrap_or(value.len())];
    let mut parts = line.splitn(5, |b| *b == b' ');
    let mut next = || parts.next().unwrap_or_default();
    let all = [next(), next(), next(), next(), next()];
    if all[0] != b"2" {
        return Err(Error::Decode(format!(
            "unsupported envelope version {:?}",
            String::from_utf8_lossy(all[0])
        )));
    }
    match line_end {
        Some(end) if all[1..].iter().all(|p| !p.is_empty()) => Ok((all, end + 1)),
        _ => Err(Error::Decode(
            "field e must be the line `2 <id> <ts> <codec> <type>`, a line feed and the payload"
                .into(),
        )),
    }
}

pub(super) fn identify(value: &[u8]) -> (Option<String>, Option<String>) {
    match split(value) {
        Ok(([_, id, _, _, ty], _)) => (utf8("e", id).ok(), utf8("e", ty).ok()),
        Err(_) => (None, None),
    }
}

pub(super) fn decode(value: &Bytes) -> Result<Meta> {
    let ([_, id, ts, ct, ty], payload_at) = split(value)?;
    Ok(Meta {
        event_id: utf8("e (event id)", id)?,
        event_type: utf8("e (type)", ty)?,
        published_at_ms: millis("the time in field e", ts)?,
        codec: codec(ct)?,
        payload: value.slice(payload_at..),
    })
}
