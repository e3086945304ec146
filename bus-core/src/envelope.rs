//! The stream-entry format.
//!
//! | field | value |
//! |---|---|
//! | `v` | envelope version, `1` |
//! | `id` | event id: a UUIDv7 made by the producer |
//! | `type` | the event's type name ([`Event::NAME`](crate::Event::NAME)) |
//! | `ts` | publish time, Unix milliseconds (producer clock) |
//! | `ct` | payload codec: `msgpack` or `json` |
//! | `p` | the payload |
//! | `h:<name>` | one field per header (e.g. `h:traceparent`) |
//! | `to` | only on replayed dead letters: the one group that should handle the entry |

use fred::bytes::Bytes;
use fred::types::{Key, Value};

use crate::codec::Codec;
use crate::error::{Error, Result};

pub(crate) const VERSION: &str = "1";
pub(crate) const F_VERSION: &str = "v";
pub(crate) const F_ID: &str = "id";
pub(crate) const F_TYPE: &str = "type";
pub(crate) const F_TS: &str = "ts";
pub(crate) const F_CODEC: &str = "ct";
pub(crate) const F_PAYLOAD: &str = "p";
pub(crate) const HEADER_PREFIX: &str = "h:";
pub(crate) const F_TO: &str = "to";

/// One entry as read from a stream: its id and raw fields (`None` when the entry was deleted or
/// trimmed while pending).
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Bytes, Bytes)>>,
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

/// Builds the field list of a new entry.
pub(crate) fn encode(
    event_id: &str,
    event_type: &str,
    published_at_ms: u64,
    codec: Codec,
    payload: Vec<u8>,
    headers: &[(String, String)],
) -> Vec<(Key, Value)> {
    // Static field names and values: no allocation for them per event.
    let mut fields = Vec::with_capacity(6 + headers.len());
    fields.push((
        Key::from_static_str(F_VERSION),
        Value::from_static_str(VERSION),
    ));
    fields.push((Key::from_static_str(F_ID), Value::from(event_id)));
    fields.push((Key::from_static_str(F_TYPE), Value::from(event_type)));
    fields.push((
        Key::from_static_str(F_TS),
        Value::Integer(published_at_ms as i64),
    ));
    fields.push((
        Key::from_static_str(F_CODEC),
        Value::from_static_str(codec.tag()),
    ));
    fields.push((
        Key::from_static_str(F_PAYLOAD),
        Value::Bytes(payload.into()),
    ));
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
    fields
        .iter()
        .find(|(k, _)| k.as_ref() == F_TO.as_bytes())
        .map(|(_, v)| v.as_ref())
}

fn utf8(field: &str, b: &Bytes) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Error::Decode(format!("field {field} is not UTF-8")))
}

/// Decodes the envelope fields of an entry. Never panics: anything unexpected is an
/// [`Error::Decode`] naming what is wrong.
pub(crate) fn decode(fields: &[(Bytes, Bytes)]) -> Result<Envelope> {
    let mut version = None;
    let mut event_id = None;
    let mut event_type = None;
    let mut ts = None;
    let mut codec = None;
    let mut payload = None;
    let mut headers = Vec::new();
    for (k, v) in fields {
        match k.as_ref() {
            b"v" => version = Some(v),
            b"id" => event_id = Some(v),
            b"type" => event_type = Some(v),
            b"ts" => ts = Some(v),
            b"ct" => codec = Some(v),
            b"p" => payload = Some(v),
            // Checked before decoding (see `addressed_to`).
            b"to" => {}
            other => {
                if let Some(name) = other.strip_prefix(HEADER_PREFIX.as_bytes()) {
                    if let (Ok(name), Ok(value)) =
                        (std::str::from_utf8(name), std::str::from_utf8(v))
                    {
                        headers.push((name.to_owned(), value.to_owned()));
                    }
                }
            }
        }
    }
    let missing = |f: &str| Error::Decode(format!("missing field {f}"));
    let version = version.ok_or_else(|| missing(F_VERSION))?;
    if version.as_ref() != VERSION.as_bytes() {
        return Err(Error::Decode(format!(
            "unsupported envelope version {:?}",
            String::from_utf8_lossy(version)
        )));
    }
    let event_id = utf8(F_ID, event_id.ok_or_else(|| missing(F_ID))?)?;
    let event_type = utf8(F_TYPE, event_type.ok_or_else(|| missing(F_TYPE))?)?;
    let published_at_ms = utf8(F_TS, ts.ok_or_else(|| missing(F_TS))?)?
        .parse::<u64>()
        .map_err(|_| Error::Decode("field ts is not a number".into()))?;
    let codec_tag = codec.ok_or_else(|| missing(F_CODEC))?;
    let codec = Codec::from_tag(codec_tag).ok_or_else(|| {
        Error::Decode(format!(
            "unknown codec {:?}",
            String::from_utf8_lossy(codec_tag)
        ))
    })?;
    let payload = payload.ok_or_else(|| missing(F_PAYLOAD))?.clone();
    Ok(Envelope {
        event_id,
        event_type,
        published_at_ms,
        codec,
        payload,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes(fields: Vec<(Key, Value)>) -> Vec<(Bytes, Bytes)> {
        fields
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Bytes(b) => b,
                    Value::String(s) => s.into_inner(),
                    Value::Integer(i) => Bytes::from(i.to_string()),
                    other => panic!("unexpected {other:?}"),
                };
                (Bytes::copy_from_slice(k.as_bytes()), v)
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let h = vec![("traceparent".to_owned(), "00-abc".to_owned())];
        let f = encode("e1", "OrderPlaced", 42, Codec::Json, b"{}".to_vec(), &h);
        let env = decode(&as_bytes(f)).expect("decode");
        assert_eq!(env.event_id, "e1");
        assert_eq!(env.event_type, "OrderPlaced");
        assert_eq!(env.published_at_ms, 42);
        assert_eq!(env.codec, Codec::Json);
        assert_eq!(&env.payload[..], b"{}");
        assert_eq!(env.headers, h);
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        /// Field names the decoder knows, plus anything else.
        fn name() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"v".to_vec()),
                Just(b"id".to_vec()),
                Just(b"type".to_vec()),
                Just(b"ts".to_vec()),
                Just(b"ct".to_vec()),
                Just(b"p".to_vec()),
                Just(b"to".to_vec()),
                Just(b"h:x".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..12),
            ]
        }

        /// Values: the expected ones, invalid UTF-8, numbers out of range, large blobs.
        fn value() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"1".to_vec()),
                Just(b"msgpack".to_vec()),
                Just(b"json".to_vec()),
                Just(b"99999999999999999999999".to_vec()),
                Just(vec![0xff, 0xfe, 0xfd]),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(any::<u8>(), 0..8_000),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Never a panic: an envelope or a typed decode error, and a decodable envelope's
            /// payload never panics the codecs either.
            #[test]
            fn any_field_map_decodes_or_is_a_typed_error(
                fields in proptest::collection::vec((name(), value()), 0..16)
            ) {
                let fields: Vec<(Bytes, Bytes)> = fields
                    .into_iter()
                    .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                    .collect();
                let _ = addressed_to(&fields);
                match decode(&fields) {
                    Ok(env) => {
                        let r = env.codec.decode::<serde_json::Value>(&env.payload);
                        prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
                    }
                    Err(e) => prop_assert!(matches!(e, Error::Decode(_)), "{e:?}"),
                }
            }

            /// Payloads of any bytes, and deeply nested ones, never panic either codec.
            #[test]
            fn any_payload_is_a_value_or_a_decode_error(
                payload in proptest::collection::vec(any::<u8>(), 0..512),
                depth in 0usize..5000,
            ) {
                for codec in [Codec::MessagePack, Codec::Json] {
                    let r = codec.decode::<serde_json::Value>(&payload);
                    prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
                }
                let mut nested = vec![0x91u8; depth];
                nested.push(0xc0);
                let r = Codec::MessagePack.decode::<serde_json::Value>(&nested);
                prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
                let json = "[".repeat(depth) + &"]".repeat(depth);
                let r = Codec::Json.decode::<serde_json::Value>(json.as_bytes());
                prop_assert!(r.is_ok() || matches!(r, Err(Error::Decode(_))));
            }
        }
    }

    #[test]
    fn foreign_entries_are_decode_errors() {
        let cases: Vec<Vec<(Bytes, Bytes)>> = vec![
            vec![],
            vec![(Bytes::from_static(b"foo"), Bytes::from_static(b"bar"))],
            vec![(Bytes::from_static(b"v"), Bytes::from_static(b"99"))],
            vec![
                (Bytes::from_static(b"v"), Bytes::from_static(b"1")),
                (Bytes::from_static(b"id"), Bytes::from_static(&[0xff, 0xfe])),
            ],
        ];
        for c in cases {
            assert!(matches!(decode(&c), Err(Error::Decode(_))), "{c:?}");
        }
    }
}
