//! Version 1: one entry field per envelope part (`v id type ts ct`).

use fred::bytes::Bytes;
use fred::types::{Key, Value};

use super::{codec, field, millis, missing, utf8, Meta, Parts};
use crate::error::{Error, Result};

const VERSION: &str = "1";
const F_VERSION: &str = "v";
const F_ID: &str = "id";
const F_TYPE: &str = "type";
const F_TS: &str = "ts";
const F_CODEC: &str = "ct";

const F_PAYLOAD: &str = "p";

/// The six fields and room for `headers` more.
pub(super) fn encode(p: Parts<'_>) -> Vec<(Key, Value)> {
    // Static field names and values: no allocation for them per event.
    let mut fields = Vec::with_capacity(6 + p.headers.len());
    fields.push((
        Key::from_static_str(F_VERSION),
        Value::from_static_str(VERSION),
    ));
    fields.push((Key::from_static_str(F_ID), Value::from(p.event_id)));
    fields.push((Key::from_static_str(F_TYPE), Value::from(p.event_type)));
    fields.push((
        Key::from_static_str(F_TS),
        Value::Integer(p.published_at_ms as i64),
    ));
    fields.push((
        Key::from_static_str(F_CODEC),
        Value::from_static_str(p.codec.tag()),
    ));
    fields.push((
        Key::from_static_str(F_PAYLOAD),
        Value::Bytes(p.payload.into()),
    ));
    fields
}

pub(super) fn identify(fields: &[(Bytes, Bytes)]) -> (Option<String>, Option<String>) {
    let text = |name| field(fields, name).and_then(|v| utf8(name, v).ok());
    (text(F_ID), text(F_TYPE))
}

pub(super) fn decode(fields: &[(Bytes, Bytes)]) -> Result<Meta> {
    let get = |name| field(fields, name).ok_or_else(|| missing(name));
    let version = field(fields, F_VERSION)
        .ok_or_else(|| Error::Decode("not an event entry: no field e or v".into()))?;
    if version.as_ref() != VERSION.as_bytes() {
        return Err(Error::Decode(format!(
            "unsupported envelope version {:?}",
            String::from_utf8_lossy(version)
        )));
    }
    Ok(Meta {
        event_id: utf8(F_ID, get(F_ID)?)?,
        event_type: utf8(F_TYPE, get(F_TYPE)?)?,
        published_at_ms: millis("field ts", get(F_TS)?)?,
        codec: codec(get(F_CODEC)?)?,
        payload: get(F_PAYLOAD)?.clone(),
    })
}
