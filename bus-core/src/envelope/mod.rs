//! The stream-entry format (the envelope around an event's payload).
//!
//! Two versions exist. Publishers write version 2 unless told otherwise
//! ([`BusBuilder::envelope_version`](crate::BusBuilder::envelope_version)); readers decode both,
//! so a stream may hold a mix of them during a rolling upgrade.
//!
//! **Version 2** (compact): one field, so Redis parses, stores and returns one value per entry.
//!
//! | field | value |
//! |---|---|
//! | `e` | the line `2 <event id> <publish time, Unix ms> <codec> <type name>` (single spaces; the type name is everything after the fourth space), a line feed (`\n`), then the payload bytes |
//!
//! **Version 1**: one field per part.
//!
//! | field | value |
//! |---|---|
//! | `v` | `1` |
//! | `id` | event id |
//! | `type` | the event's type name ([`Event::NAME`](crate::Event::NAME)) |
//! | `ts` | publish time, Unix milliseconds (producer clock) |
//! | `ct` | payload codec: `msgpack` or `json` |
//! | `p` | the payload |
//!
//! Both versions may add:
//!
//! | field | value |
//! |---|---|
//! | `h:<name>` | one field per header (e.g. `h:traceparent`) |
//! | `to` | only on replayed dead letters: the one group that should handle the entry |
//!
//! The event id is a UUIDv7 made by the producer. An entry with an `e` field is read as version
//! 2 (whatever else it holds); otherwise its `v` field names the version.

mod v1;
mod v2;

#[cfg(test)]
mod tests;

use fred::bytes::Bytes;
use fred::types::{Key, Value};

use crate::codec::Codec;
use crate::error::{Error, Result};

pub(crate) const HEADER_PREFIX: &str = "h:";
pub(crate) const F_TO: &str = "to";

/// The entry format a publisher writes. Readers decode every version, whatever this says.
///
/// Version 2 is the default. Choose version 1 only while workers built with a Streambus that
/// reads only version 1 still consume the stream (it would dead-letter version 2 entries as
/// undecodable): upgrade every worker first, then the publishers, then drop the setting.
///
/// ```
/// use bus_core::{Bus, EnvelopeVersion};
/// let builder = Bus::builder().envelope_version(EnvelopeVersion::V1);
/// # let _ = builder;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EnvelopeVersion {
    /// Six fields: `v id type ts ct p`.
    V1,
    /// One field `e`: a line with the version, id, time, codec and type, then the payload.
    #[default]
    V2,
}

/// One entry as read from a stream: its id and raw fields (`None` when the entry was deleted or
/// trimmed while pending).
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Bytes, Bytes)>>,
}

impl RawEntry {
    /// Bytes of all field names and values.
    pub(crate) fn size(&self) -> usize {
        self.fields
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }
}

/// A decoded envelope: everything but the typed payload.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) published_at_ms: u64,
    pub(crate) codec: Codec,
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(String, String)>,
}

/// What goes into a new entry, borrowed from the publisher.
pub(crate) struct Parts<'a> {
    pub(crate) event_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) published_at_ms: u64,
    pub(crate) codec: Codec,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: &'a [(String, String)],
}

/// Builds the field list of a new entry in the given version. A type name with a line feed
/// cannot end version 2's envelope line, so such an event is written as version 1 (which every
/// reader reads too).
pub(crate) fn encode(version: EnvelopeVersion, parts: Parts<'_>) -> Vec<(Key, Value)> {
    let headers = parts.headers;
    let mut fields = match version {
        EnvelopeVersion::V2 if !parts.event_type.contains('\n') => v2::encode(parts),
        _ => v1::encode(parts),
    };
    for (k, v) in headers {
        fields.push((
            Key::from(format!("{HEADER_PREFIX}{k}")),
            Value::from(v.as_str()),
        ));
    }
    fields
}

/// The group a replayed dead letter is addressed to (its `to` field), found without decoding the
/// rest: an entry that fails to decode must still reach only that group.
pub(crate) fn addressed_to(fields: &[(Bytes, Bytes)]) -> Option<&[u8]> {
    field(fields, F_TO).map(|v| v.as_ref())
}

/// The value of the first field named `name`.
fn field<'a>(fields: &'a [(Bytes, Bytes)], name: &str) -> Option<&'a Bytes> {
    fields
        .iter()
        .find(|(k, _)| k.as_ref() == name.as_bytes())
        .map(|(_, v)| v)
}

/// The event id and type of an entry, as far as they can be read (for listings of dead letters,
/// which keep entries that may not decode).
pub(crate) fn identify(fields: &[(Bytes, Bytes)]) -> (Option<String>, Option<String>) {
    match v2::entry_field(fields) {
        Some(value) => v2::identify(value),
        None => v1::identify(fields),
    }
}

/// Decodes the envelope of an entry of any version. Never panics: anything unexpected is an
/// [`Error::Decode`] naming what is wrong.
pub(crate) fn decode(fields: &[(Bytes, Bytes)]) -> Result<Envelope> {
    let mut headers = Vec::new();
    for (k, v) in fields {
        if let Some(name) = k.as_ref().strip_prefix(HEADER_PREFIX.as_bytes()) {
            if let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(v)) {
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
    }
    let meta = match v2::entry_field(fields) {
        Some(value) => v2::decode(value)?,
        None => v1::decode(fields)?,
    };
    Ok(Envelope {
        event_id: meta.event_id,
        event_type: meta.event_type,
        published_at_ms: meta.published_at_ms,
        codec: meta.codec,
        payload: meta.payload,
        headers,
    })
}

/// The parts of an envelope besides the headers, as each version decodes them.
struct Meta {
    event_id: String,
    event_type: String,
    published_at_ms: u64,
    codec: Codec,
    payload: Bytes,
}

fn missing(field: &str) -> Error {
    Error::Decode(format!("missing field {field}"))
}

fn utf8(field: &str, b: &[u8]) -> Result<String> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| Error::Decode(format!("field {field} is not UTF-8")))
}

fn codec(tag: &[u8]) -> Result<Codec> {
    Codec::from_tag(tag)
        .ok_or_else(|| Error::Decode(format!("unknown codec {:?}", String::from_utf8_lossy(tag))))
}

fn millis(field: &str, text: &[u8]) -> Result<u64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| Error::Decode(format!("{field} is not a number")))
}
