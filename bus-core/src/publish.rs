//! Publishing: the per-publish options, encoding an event into a stream entry (envelope,
//! headers, limits), and writing it (`XADD`, or the de-dup script), alone or in batches.

use std::borrow::Cow;
use std::time::Duration;

use fred::types::Value;
use tracing::Instrument;

use crate::bus::Bus;
use crate::envelope;
use crate::error::ClientResult;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::names::validate_name;
use crate::redis;

/// What [`Bus::publish`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The producer-made event id (UUIDv7): stable across retries and replays; use it for
    /// idempotency.
    pub event_id: String,
    /// The stream entry id Redis assigned.
    pub entry_id: String,
    /// True when a de-duplicated publish found its key already used within the window: nothing
    /// was written, and the ids are those of the first publish.
    pub duplicate: bool,
}

/// Per-publish options.
///
/// ```
/// let opts = bus_core::PublishOptions::new().header("traceparent", "00-4bf9…-01");
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    headers: Vec<(String, String)>,
    dedup: Option<(String, Duration)>,
    priority: crate::names::Priority,
    replicas: Option<(u32, Duration)>,
}

impl PublishOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a string header carried with the event (for example W3C `traceparent`). Header names
    /// follow the same rules as stream names.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Publishes into a priority lane (default [`Priority::Normal`](crate::Priority::Normal)):
    /// workers take events of higher lanes first.
    #[must_use]
    pub fn priority(mut self, priority: crate::names::Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Waits until at least `replicas` replicas have the event (`WAIT` on the publishing
    /// connection, in the same pipeline as the `XADD`), for at most `timeout`. With async
    /// replication, an acknowledged write can otherwise be lost in a failover. When fewer replicas
    /// confirm in time, the publish fails with [`Error::NotReplicated`] — the event *is* stored on
    /// the primary. `WAIT` holds the bus connection meanwhile: give such publishes a `Bus` of
    /// their own if other traffic shares it.
    #[must_use]
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = Some((replicas, timeout));
        self
    }

    pub(crate) fn has_dedup(&self) -> bool {
        self.dedup.is_some()
    }

    /// The same options on the normal lane (where delayed events go).
    pub(crate) fn normal_lane(&self) -> Self {
        Self {
            priority: crate::names::Priority::Normal,
            ..self.clone()
        }
    }

    /// De-duplicates by an idempotency key: within `window`, only the first publish with
    /// this key writes an event; later ones return the first one's ids with
    /// [`Published::duplicate`] set. The key lives in `<prefix>:{<stream>}:dedup:<key>` with the
    /// window as its TTL, set in the same script as the write. The window must be between 1 ms
    /// and [`MAX_DEDUP_WINDOW`](crate::MAX_DEDUP_WINDOW); publishing with another one is an
    /// [`Error::Config`] and writes nothing.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize, bus_core::Event)]
    /// # #[event(stream = "orders")]
    /// # struct OrderPlaced { order_id: u64 }
    /// # async fn demo(bus: bus_core::Bus) -> bus_core::Result<()> {
    /// let opts = bus_core::PublishOptions::new().dedup("order-42", Duration::from_secs(600));
    /// let first = bus.publish_with(&OrderPlaced { order_id: 42 }, opts.clone()).await?;
    /// let again = bus.publish_with(&OrderPlaced { order_id: 42 }, opts).await?;
    /// assert!(again.duplicate && again.event_id == first.event_id);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn dedup(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.dedup = Some((key.into(), window));
        self
    }
}

/// The longest de-duplication window: 100 years, far below what Redis accepts as a TTL.
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A de-duplication window must be at least 1 ms and at most [`MAX_DEDUP_WINDOW`], checked before
/// anything is written.
pub(crate) fn validate_dedup_window(window: Duration) -> Result<()> {
    if window < Duration::from_millis(1) || window > MAX_DEDUP_WINDOW {
        return Err(Error::Config(format!(
            "de-duplication window {window:?} is outside 1 ms ..= {MAX_DEDUP_WINDOW:?}"
        )));
    }
    Ok(())
}

/// The caller's headers plus, with the `opentelemetry` feature, the current span's trace context
/// (headers the caller set win).
fn traced_headers(headers: &[(String, String)]) -> Cow<'_, [(String, String)]> {
    #[cfg(feature = "opentelemetry")]
    {
        let extra = crate::otel::inject(headers);
        if !extra.is_empty() {
            return Cow::Owned(headers.iter().cloned().chain(extra).collect());
        }
    }
    Cow::Borrowed(headers)
}

/// An encoded entry ready for XADD.
pub(crate) struct Prepared {
    pub(crate) key: String,
    pub(crate) event_id: String,
    pub(crate) fields: Vec<(fred::types::Key, Value)>,
}

impl Bus {
    pub(crate) fn prepare<E: Event>(&self, event: &E, opts: &PublishOptions) -> Result<Prepared> {
        validate_name("stream", E::STREAM)?;
        for (name, _) in &opts.headers {
            validate_name("header", name)?;
        }
        let (event_id, fields) = self.encode_entry(event, opts)?;
        Ok(Prepared {
            key: self.keys(E::STREAM).lane(opts.priority),
            event_id,
            fields,
        })
    }

    /// Encodes one event's entry fields (names already checked).
    fn encode_entry<E: Event>(
        &self,
        event: &E,
        opts: &PublishOptions,
    ) -> Result<(String, Vec<(fred::types::Key, Value)>)> {
        let payload = self.conn.codec.encode(event)?;
        if payload.len() > self.conn.max_payload {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                limit: self.conn.max_payload,
            });
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        let headers = traced_headers(&opts.headers);
        let (max_count, max_bytes) = self.conn.header_limits;
        let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if headers.len() > max_count || bytes > max_bytes {
            return Err(Error::HeadersTooLarge {
                count: headers.len(),
                bytes,
                max_count,
                max_bytes,
            });
        }
        let fields = envelope::encode(
            self.conn.envelope_version,
            envelope::Parts {
                event_id: &event_id,
                event_type: E::NAME,
                published_at_ms: crate::time::now_ms(),
                codec: self.conn.codec,
                payload,
                headers: &headers,
            },
        );
        Ok((event_id, fields))
    }

    /// Publishes one event to its stream. Returns once Redis has stored it.
    ///
    /// Fails with nothing written when the stream name is invalid ([`Error::InvalidName`]) or the
    /// payload is over the limit ([`Error::PayloadTooLarge`]).
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Published> {
        self.publish_with(event, PublishOptions::new()).await
    }

    /// Publishes one event with options (headers).
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        opts: PublishOptions,
    ) -> Result<Published> {
        let span = tracing::debug_span!(
            "publish",
            stream = E::STREAM,
            event_id = tracing::field::Empty
        );
        self.publish_in(event, opts, &span)
            .instrument(span.clone())
            .await
    }

    /// [`Bus::publish_with`] inside its `publish` span (current while this runs, so trace
    /// headers are taken from it).
    async fn publish_in<E: Event>(
        &self,
        event: &E,
        opts: PublishOptions,
        span: &tracing::Span,
    ) -> Result<Published> {
        if let Some((key, window)) = &opts.dedup {
            validate_name("dedup key", key)?;
            validate_dedup_window(*window)?;
        }
        let p = self.prepare(event, &opts)?;
        span.record("event_id", p.event_id.as_str());
        if let Some((key, window)) = &opts.dedup {
            return self.publish_dedup::<E>(p, key, *window).await;
        }
        if let Some((replicas, timeout)) = opts.replicas {
            return self.publish_replicated::<E>(p, replicas, timeout).await;
        }
        let entry_id = redis::add_entry(&self.conn.client, &p.key, p.fields).await?;
        crate::metrics::published(E::STREAM, 1);
        Ok(Published {
            event_id: p.event_id,
            entry_id,
            duplicate: false,
        })
    }

    async fn publish_replicated<E: Event>(
        &self,
        p: Prepared,
        replicas: u32,
        timeout: Duration,
    ) -> Result<Published> {
        let (entry_id, acked) =
            redis::add_entry_and_wait(&self.conn.client, &p.key, p.fields, replicas, timeout)
                .await?;
        crate::metrics::published(E::STREAM, 1);
        if acked < i64::from(replicas) {
            return Err(Error::NotReplicated {
                event_id: p.event_id,
                entry_id,
                acked: acked.max(0) as u32,
                wanted: replicas,
            });
        }
        Ok(Published {
            event_id: p.event_id,
            entry_id,
            duplicate: false,
        })
    }

    async fn publish_dedup<E: Event>(
        &self,
        p: Prepared,
        key: &str,
        window: Duration,
    ) -> Result<Published> {
        let dedup_key = self.keys(E::STREAM).dedup(key);
        let mut args = vec![
            Value::from(window.as_millis() as i64),
            Value::from(p.event_id.as_str()),
        ];
        for (k, v) in p.fields {
            args.push(Value::Bytes(k.into_bytes()));
            args.push(v);
        }
        let reply = crate::redis::eval(
            crate::redis::dedup_publish_script(),
            &self.conn.client,
            vec![dedup_key, p.key],
            args,
        )
        .await?;
        let (fresh, stored): (i64, String) = reply.convert().client_err()?;
        let (event_id, entry_id) = match stored.split_once('|') {
            Some((e, i)) => (e.to_owned(), i.to_owned()),
            None => (p.event_id, stored),
        };
        if fresh == 1 {
            crate::metrics::published(E::STREAM, 1);
        }
        Ok(Published {
            event_id,
            entry_id,
            duplicate: fresh != 1,
        })
    }

    /// Publishes several events in one pipeline. Every event is encoded and checked first: if any
    /// is invalid or too large, nothing is written.
    pub async fn publish_batch<E: Event>(&self, events: &[E]) -> Result<Vec<Published>> {
        let opts = PublishOptions::new();
        validate_name("stream", E::STREAM)?;
        let encoded = events
            .iter()
            .map(|e| self.encode_entry(e, &opts))
            .collect::<Result<Vec<_>>>()?;
        if encoded.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.keys(E::STREAM).lane(opts.priority);
        let (event_ids, entries): (Vec<String>, Vec<_>) = encoded.into_iter().unzip();
        let entry_ids = redis::add_entries(&self.conn.client, &key, entries).await?;
        crate::metrics::published(E::STREAM, entry_ids.len() as u64);
        Ok(event_ids
            .into_iter()
            .zip(entry_ids)
            .map(|(event_id, entry_id)| Published {
                event_id,
                entry_id,
                duplicate: false,
            })
            .collect())
    }
}
