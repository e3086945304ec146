//! Payload codecs: MessagePack (default, via `rmp-serde`) and JSON (for interoperability).

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Deepest nesting a MessagePack payload may have.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

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

    /// Deserializes a value (MessagePack nesting deeper than [`MAX_PAYLOAD_DEPTH`] is an error).
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            Codec::MessagePack => {
                // An explicit nesting limit: a crafted payload of deeply nested arrays must be a
                // decode error, not a stack overflow in the worker.
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(MAX_PAYLOAD_DEPTH);
                T::deserialize(&mut de).map_err(|e| Error::Decode(e.to_string()))
            }
            // serde_json stops at 128 levels by itself.
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nesting_bomb_is_a_decode_error() {
        // 100 nested one-element arrays around a nil.
        let mut bomb = vec![0x91u8; 100];
        bomb.push(0xc0);
        let r = Codec::MessagePack.decode::<serde_json::Value>(&bomb);
        assert!(matches!(r, Err(Error::Decode(_))), "{r:?}");
        let mut ok = vec![0x91u8; 10];
        ok.push(0xc0);
        assert!(Codec::MessagePack.decode::<serde_json::Value>(&ok).is_ok());
    }

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
