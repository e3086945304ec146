//! Delayed and scheduled publish.
//!
//! A delayed event waits in the stream's sorted set `<prefix>:{<stream>}:delayed`, scored by its
//! due time in Unix ms on **Redis's** clock (`publish_after` computes it in a script from `TIME`).
//! The member is the entry's field list, MessagePack-encoded (an array of raw strings), so the
//! mover script can rebuild the entry with the built-in `cmsgpack`. Every worker process runs a
//! mover for the streams it subscribes to: one script that moves due members into the stream and
//! removes them from the set atomically, so any number of concurrent movers never duplicate or
//! lose an event.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::types::Value;
use tokio::sync::watch;

use crate::bus::Bus;
use crate::conn::Conn;
use crate::error::ClientResult;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publish::PublishOptions;
use crate::redis::{self, value_bytes};

/// Most events moved by one mover call.
const MOVE_BATCH: i64 = 200;

/// What [`Bus::publish_after`] and [`Bus::publish_at`] return.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scheduled {
    /// The producer-made event id (the same id the handler will see).
    pub event_id: String,
    /// When it is due, Unix ms on Redis's clock.
    pub due_ms: u64,
}

/// Most fields a delayed event may have: the mover rebuilds the entry with Lua's `unpack`, which
/// takes a bounded number of values.
const MAX_DELAYED_FIELDS: usize = 3000;

/// Encodes an entry's fields as a MessagePack array of raw strings. Redis's `cmsgpack` has no
/// `bin` type, so byte strings go as `str` headers followed by the raw bytes (Lua strings are
/// binary-safe; `cmsgpack` does not check UTF-8).
fn encode_member(fields: &[(fred::types::Key, Value)]) -> Result<Vec<u8>> {
    if fields.len() > MAX_DELAYED_FIELDS {
        return Err(Error::Config(format!(
            "a delayed event may carry at most {MAX_DELAYED_FIELDS} fields (envelope and headers); \
             this one has {}",
            fields.len()
        )));
    }
    let mut out = Vec::with_capacity(64);
    let enc = |e: rmp::encode::ValueWriteError| Error::Encode(e.to_string());
    rmp::encode::write_array_len(&mut out, (fields.len() * 2) as u32).map_err(enc)?;
    for (k, v) in fields {
        let b =
            value_bytes(v.clone()).ok_or_else(|| Error::Encode("unexpected field value".into()))?;
        for bytes in [k.as_bytes(), &b[..]] {
            rmp::encode::write_str_len(&mut out, bytes.len() as u32).map_err(enc)?;
            out.extend_from_slice(bytes);
        }
    }
    Ok(out)
}

impl Bus {
    /// Publishes an event that handlers see once `delay` has passed (measured on Redis's clock).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize, bus_core::Event)]
    /// # #[event(stream = "orders")]
    /// # struct Reminder { order_id: u64 }
    /// # async fn demo(bus: bus_core::Bus) -> bus_core::Result<()> {
    /// let s = bus.publish_after(&Reminder { order_id: 7 }, Duration::from_secs(3600)).await?;
    /// println!("event {} due at {} ms", s.event_id, s.due_ms);
    /// # Ok(()) }
    /// ```
    pub async fn publish_after<E: Event>(&self, event: &E, delay: Duration) -> Result<Scheduled> {
        self.schedule(
            event,
            (delay.as_millis() as u64).to_string(),
            PublishOptions::new(),
        )
        .await
    }

    /// [`publish_after`](Self::publish_after) with headers ([`PublishOptions::header`]). Delayed
    /// events go to the normal lane; de-duplication is not available for them (an
    /// [`Error::Config`]). An event with more fields than the mover can rebuild (envelope and
    /// headers over a few thousand) is refused here, not left for the mover.
    pub async fn publish_after_with<E: Event>(
        &self,
        event: &E,
        delay: Duration,
        opts: PublishOptions,
    ) -> Result<Scheduled> {
        self.schedule(event, (delay.as_millis() as u64).to_string(), opts)
            .await
    }

    /// Publishes an event that handlers see from `at` on (wall-clock time; a time in the past is
    /// due at once).
    pub async fn publish_at<E: Event>(&self, event: &E, at: SystemTime) -> Result<Scheduled> {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.schedule(event, format!("at:{ms}"), PublishOptions::new())
            .await
    }

    async fn schedule<E: Event>(
        &self,
        event: &E,
        when: String,
        opts: PublishOptions,
    ) -> Result<Scheduled> {
        if opts.has_dedup() {
            return Err(Error::Config(
                "de-duplication is not available for delayed events".into(),
            ));
        }
        let p = self.prepare(event, &opts.normal_lane())?;
        let member = encode_member(&p.fields)?;
        let delayed = self.keys(E::STREAM).delayed();
        let due = redis::eval(
            redis::schedule_delayed_script(),
            &self.conn.client,
            vec![delayed],
            vec![Value::from(when), Value::Bytes(member.into())],
        )
        .await?;
        Ok(Scheduled {
            event_id: p.event_id,
            due_ms: due.as_u64().unwrap_or(0),
        })
    }

    /// How many events wait in a stream's delayed set.
    pub async fn delayed_count(&self, stream: &str) -> Result<u64> {
        crate::names::validate_name("stream", stream)?;
        redis::set_len(&self.conn.client, &self.keys(stream).delayed()).await
    }
}

/// Moves due delayed events of one stream into it, every `interval`, until `stop`.
pub(crate) async fn mover_loop(
    conn: Conn,
    stream: &'static str,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let keys = conn.keys(stream);
    let script_keys = vec![
        keys.delayed(),
        keys.stream().to_owned(),
        keys.delayed_dead_letters(),
    ];
    let unmovable = crate::metrics::delayed_unmovable(stream);
    loop {
        if *stop.borrow() {
            return;
        }
        let r = redis::eval(
            redis::move_delayed_script(),
            &conn.client,
            script_keys.clone(),
            vec![Value::from(MOVE_BATCH)],
        )
        .await;
        let (moved, aside) = match r.and_then(|v| v.convert::<(i64, i64)>().client_err()) {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(stream, error = %e, "moving delayed events failed");
                (0, 0)
            }
        };
        if moved > 0 {
            tracing::debug!(stream, moved, "moved due delayed events");
        }
        if aside > 0 {
            unmovable.increment(aside as u64);
            tracing::error!(
                stream,
                count = aside,
                key = %script_keys[2],
                "delayed events that cannot become entries were moved aside"
            );
        }
        if moved + aside >= MOVE_BATCH {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_msgpack_arrays_of_raw_strings() {
        let m = encode_member(&[
            (
                fred::types::Key::from("p"),
                Value::Bytes(vec![0xff, 0].into()),
            ),
            (fred::types::Key::from("v"), Value::from("1")),
        ])
        .expect("encode");
        assert_eq!(
            m,
            vec![0x94, 0xa1, b'p', 0xa2, 0xff, 0, 0xa1, b'v', 0xa1, b'1']
        );
    }
}
