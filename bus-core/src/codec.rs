//! Payload codecs: MessagePack (default, via `rmp-serde`) and JSON (for interoperability).

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// How event payloads are serialized. The codec is recorded in every entry (field `ct`), so a
/// subscriber decodes entries written with either codec whatever its own setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack with field names (`rmp_serde::to_vec_named`): compact, and tolerant of added or
    /// reordered fields.
    #[default]
    MessagePack,
    /// JSON (`serde_json`): readable with `redis-cli` and from other languages.
    Json,
}

impl Codec {
    /// The tag stored in the entry's `ct` field.
    pub fn tag(self) -> &'static str {
        match self {
            Codec::MessagePack => "msgpack",
            Codec::Json => "json",
        }
    }

    /// The codec for a `ct` tag.
    pub fn from_tag(tag: &[u8]) -> Option<Self> {
        match tag {
            b"msgpack" => Some(Codec::MessagePack),
            b"json" => Some(Codec::Json),
            _ => None,
        }
    }

    /// Serializes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::MessagePack => {
                rmp_serde::to_vec_named(value).map_err(|e| Error::Encode(e.to_string()))
            }
            Codec::Json => serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string())),
        }
    }

    /// Deserializes a value.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            Codec::MessagePack => {
                rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
            }
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
        name: String,
    }

    #[test]
    fn round_trips_both_codecs() {
        let o = Order {
            id: 7,
            name: "x".into(),
        };
        for c in [Codec::MessagePack, Codec::Json] {
            let bytes = c.encode(&o).expect("encode");
            assert_eq!(c.decode::<Order>(&bytes).expect("decode"), o);
            assert_eq!(Codec::from_tag(c.tag().as_bytes()), Some(c));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for c in [Codec::MessagePack, Codec::Json] {
            assert!(matches!(
                c.decode::<Order>(&[0xc1, 0xff, 0x00]),
                Err(Error::Decode(_))
            ));
        }
    }
}
