//! Dead letters: events a group gave up on, kept in a per-group stream
//! `<prefix>:{<stream>}:dlq:<group>` with the original entry and why it failed.

use fred::prelude::*;
use fred::types::Value;

use crate::bus::Bus;
use crate::envelope::{self, RawEntry};
use crate::error::Result;
use crate::redis;

/// One dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Id of the dead-letter entry.
    pub id: String,
    /// The group that gave up.
    pub group: String,
    /// The original stream entry id.
    pub entry_id: String,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// Why: `decode` (the entry could not be decoded), `rejected` (the handler rejected it), …
    pub reason: String,
    /// The last error.
    pub error: String,
    /// When (Redis clock, Unix ms).
    pub failed_at_ms: u64,
    /// The consumer that moved it.
    pub consumer: String,
    /// The event id, when the original entry had one.
    pub event_id: Option<String>,
    /// The event type, when the original entry had one.
    pub event_type: Option<String>,
    /// The original entry's fields, byte for byte.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl DeadLetter {
    fn from_entry(e: RawEntry) -> Self {
        let mut d = DeadLetter {
            id: e.id,
            group: String::new(),
            entry_id: String::new(),
            attempts: 0,
            reason: String::new(),
            error: String::new(),
            failed_at_ms: 0,
            consumer: String::new(),
            event_id: None,
            event_type: None,
            fields: Vec::new(),
        };
        for (k, v) in e.fields.unwrap_or_default() {
            match k.as_ref() {
                b"dl.group" if d.group.is_empty() => d.group = text(&v),
                b"dl.entry_id" if d.entry_id.is_empty() => d.entry_id = text(&v),
                b"dl.attempts" if d.attempts == 0 => d.attempts = text(&v).parse().unwrap_or(0),
                b"dl.reason" if d.reason.is_empty() => d.reason = text(&v),
                b"dl.error" if d.error.is_empty() => d.error = text(&v),
                b"dl.failed_at" if d.failed_at_ms == 0 => {
                    d.failed_at_ms = text(&v).parse().unwrap_or(0)
                }
                b"dl.consumer" if d.consumer.is_empty() => d.consumer = text(&v),
                b"dl.truncated" | b"dl.missing" => {}
                _ => {
                    if k.as_ref() == envelope::F_ID.as_bytes() && d.event_id.is_none() {
                        d.event_id = std::str::from_utf8(&v).ok().map(str::to_owned);
                    }
                    if k.as_ref() == envelope::F_TYPE.as_bytes() && d.event_type.is_none() {
                        d.event_type = std::str::from_utf8(&v).ok().map(str::to_owned);
                    }
                    d.fields.push((k.to_vec(), v.to_vec()));
                }
            }
        }
        d
    }
}

impl Bus {
    /// The oldest `limit` dead letters of a group on a stream.
    pub async fn dead_letters(
        &self,
        stream: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let key = self.dead_letter_key(stream, group)?;
        let reply: Value = self
            .inner
            .client
            .xrange(key.as_str(), "-", "+", Some(limit as u64))
            .await?;
        Ok(redis::parse_entries(reply)
            .into_iter()
            .map(DeadLetter::from_entry)
            .collect())
    }

    /// How many dead letters a group has on a stream.
    pub async fn dead_letter_count(&self, stream: &str, group: &str) -> Result<u64> {
        let key = self.dead_letter_key(stream, group)?;
        Ok(self.inner.client.xlen(key.as_str()).await?)
    }
}
