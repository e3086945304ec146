//! Dead letters: events a group gave up on, kept in a per-group stream
//! `<prefix>:{<stream>}:dlq:<group>` with the original entry and why it failed.

use fred::bytes::Bytes;
use fred::types::Value;

use crate::bus::Bus;
use crate::conn::Conn;
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

impl DeadLetter {
    /// The original event, decoded from [`fields`](Self::fields) whatever its entry format:
    /// [`Error::Decode`](crate::Error::Decode) when the entry was not a readable event (dead
    /// letters with reason `decode` are often such entries).
    ///
    /// ```no_run
    /// # #[derive(serde::Deserialize)] struct OrderPlaced { order_id: u64 }
    /// # async fn demo(bus: bus_core::Bus) -> bus_core::Result<()> {
    /// for d in bus.dead_letters("orders", "billing")?.list(10).await? {
    ///     match d.decode::<OrderPlaced>() {
    ///         Ok(order) => println!("order {} failed: {}", order.order_id, d.error),
    ///         Err(e) => println!("{} is not an order: {e}", d.entry_id),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E> {
        let fields: Vec<(Bytes, Bytes)> = self
            .fields
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect();
        let env = envelope::decode(&fields)?;
        env.codec.decode(&env.payload)
    }
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
        let mut original = Vec::new();
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
                _ => original.push((k, v)),
            }
        }
        (d.event_id, d.event_type) = envelope::identify(&original);
        d.fields = original
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        d
    }
}

/// One group's dead-letter stream: list, count, replay, purge.
///
/// ```no_run
/// # async fn demo(bus: bus_core::Bus) -> bus_core::Result<()> {
/// let dlq = bus.dead_letters("orders", "billing")?;
/// for d in dlq.list(10).await? {
///     println!("{} failed {} times: {} ({})", d.entry_id, d.attempts, d.error, d.reason);
/// }
/// dlq.replay_all().await?;   // back to `billing` only, attempts start again at 1
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadLetters {
    conn: Conn,
    group: String,
    stream_key: String,
    key: String,
}

/// Most ids per replay or purge call.
const CHUNK: usize = 100;

impl DeadLetters {
    /// The oldest `limit` dead letters.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.range("-", limit).await
    }

    /// Up to `limit` dead letters from id `start` on (inclusive), for paging.
    pub async fn range(&self, start: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(
            redis::entries(&self.conn.client, &self.key, start, "+", limit)
                .await?
                .into_iter()
                .map(DeadLetter::from_entry)
                .collect(),
        )
    }

    /// How many dead letters there are.
    pub async fn count(&self) -> Result<u64> {
        redis::stream_len(&self.conn.client, &self.key).await
    }

    /// Sends the given dead letters (by [`DeadLetter::id`]) back to this group only: other groups
    /// of the stream never run them again, and attempts start again at 1. Each is removed from the
    /// dead-letter stream in the same atomic step. Returns how many were replayed.
    pub async fn replay(&self, ids: &[String]) -> Result<u64> {
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            let mut args = vec![Value::from(self.group.as_str())];
            args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
            let r = redis::eval(
                redis::replay_script(),
                &self.conn.client,
                vec![self.stream_key.clone(), self.key.clone()],
                args,
            )
            .await?;
            n += r.as_u64().unwrap_or(0);
        }
        Ok(n)
    }

    /// Replays every dead letter there is when the call starts; see [`replay`](Self::replay).
    ///
    /// The newest dead-letter id is read first, and only entries up to it are replayed, oldest
    /// first, in chunks. Dead letters added meanwhile — including replays that the group fails
    /// again at once — are left for a later call, so this always ends, however fast the group
    /// rejects. Each chunk is replayed atomically, the whole call is not: dead letters replayed or
    /// purged concurrently by someone else are skipped. Returns how many were replayed, which is
    /// the count at the start unless some were removed concurrently.
    pub async fn replay_all(&self) -> Result<u64> {
        let Some(last) = self.newest_id().await? else {
            return Ok(0);
        };
        let mut n = 0;
        let mut start = "-".to_owned();
        loop {
            let ids = self.ids_between(&start, &last, CHUNK).await?;
            let Some(tail) = ids.last() else {
                return Ok(n);
            };
            // Page on past what was just replayed instead of restarting at the head, so progress
            // never depends on every replayed id having been deleted.
            start = format!("({tail}");
            n += self.replay(&ids).await?;
            if ids.len() < CHUNK {
                return Ok(n);
            }
        }
    }

    /// The id of the newest dead letter, if there is any.
    async fn newest_id(&self) -> Result<Option<String>> {
        redis::last_entry_id(&self.conn.client, &self.key).await
    }

    /// Up to `limit` dead-letter ids from `start` to `end` (XRANGE bounds, `(` = exclusive).
    async fn ids_between(&self, start: &str, end: &str, limit: usize) -> Result<Vec<String>> {
        Ok(
            redis::entries(&self.conn.client, &self.key, start, end, limit)
                .await?
                .into_iter()
                .map(|e| e.id)
                .collect(),
        )
    }

    /// Deletes the given dead letters. Returns how many were deleted.
    pub async fn purge(&self, ids: &[String]) -> Result<u64> {
        let mut n = 0;
        for chunk in ids.chunks(CHUNK) {
            n += redis::delete_entries(&self.conn.client, &self.key, chunk.to_vec()).await?;
        }
        Ok(n)
    }

    /// Deletes every dead letter of this group. Returns exactly how many were deleted (the count
    /// and the delete run in one transaction; `UNLINK` frees the memory off Redis's main thread).
    pub async fn purge_all(&self) -> Result<u64> {
        redis::count_and_unlink_stream(&self.conn.client, &self.key).await
    }
}

impl Bus {
    /// The dead letters of `group` on `stream`.
    pub fn dead_letters(&self, stream: &str, group: &str) -> Result<DeadLetters> {
        Ok(DeadLetters {
            conn: self.conn.clone(),
            group: group.to_owned(),
            stream_key: self.stream_key(stream)?,
            key: self.dead_letter_key(stream, group)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::bytes::Bytes;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"dl.attempts".to_vec()),
            Just(b"dl.failed_at".to_vec()),
            Just(b"dl.error".to_vec()),
            Just(b"id".to_vec()),
            Just(b"type".to_vec()),
            Just(b"e".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any entry in a dead-letter stream (written by anyone) reads as a dead letter: no panic,
        /// numbers that do not parse become 0, invalid UTF-8 is replaced.
        #[test]
        fn any_entry_reads_as_a_dead_letter(
            fields in proptest::collection::vec(
                (name(), proptest::collection::vec(any::<u8>(), 0..64)),
                0..16,
            ),
            deleted in any::<bool>(),
        ) {
            let raw = RawEntry {
                id: "1-0".into(),
                fields: (!deleted).then(|| {
                    fields.into_iter().map(|(k, v)| (Bytes::from(k), Bytes::from(v))).collect()
                }),
            };
            let d = DeadLetter::from_entry(raw);
            prop_assert_eq!(d.id, "1-0");
        }
    }
}
