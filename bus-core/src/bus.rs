//! The [`Bus`] handle: connect, publish.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::Value;
use tracing::Instrument;

use crate::codec::Codec;
use crate::envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::names::{validate_name, StreamKeys};
use crate::worker::Worker;

/// Default payload limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Default most headers per event.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default most header bytes (names and values) per event: 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// The oldest Redis version Streambus runs on.
pub(crate) const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

/// A connection to the bus. Cheap to clone: clones share one multiplexed Redis connection, and
/// concurrent publishes from clones are pipelined.
///
/// ```no_run
/// # use bus_core::{Bus, Codec, Event};
/// # #[derive(serde::Serialize, serde::Deserialize, Event)]
/// # #[event(stream = "orders")]
/// # struct OrderPlaced { order_id: u64 }
/// # async fn demo() -> bus_core::Result<()> {
/// let bus = Bus::builder()
///     .prefix("shop")                 // keys are `shop:{orders}:…`
///     .codec(Codec::MessagePack)      // the default; Codec::Json for interop
///     .max_payload_bytes(256 * 1024)
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// let published = bus.publish(&OrderPlaced { order_id: 1 }).await?;
/// println!("event {} is entry {}", published.event_id, published.entry_id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<BusInner>,
}

pub(crate) struct BusInner {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) codec: Codec,
    pub(crate) max_payload: usize,
    /// Most headers and header bytes (names and values) per event.
    pub(crate) header_limits: (usize, usize),
    pub(crate) url: String,
    /// How long a command may take before the client gives up on it; blocking reads get this much
    /// on top of their block time, so a read never times out on the client while Redis still
    /// blocks (entries it then delivered would reach nobody).
    pub(crate) command_timeout: Duration,
    pub(crate) waiters: tokio::sync::OnceCell<crate::status::Waiters>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("codec", &self.inner.codec)
            .field("max_payload", &self.inner.max_payload)
            .finish()
    }
}

/// What [`Bus::publish`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// De-duplicates by an idempotency key: within `window`, only the first publish with
    /// this key writes an event; later ones return the first one's ids with
    /// [`Published::duplicate`] set. The key lives in `<prefix>:{<stream>}:dedup:<key>` with the
    /// window as its TTL, set in the same script as the write.
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

    /// De-duplicates by an idempotency key (see above). The window must be between 1 ms and
    /// [`MAX_DEDUP_WINDOW`](crate::MAX_DEDUP_WINDOW); publishing with another one is an
    /// [`Error::Config`] and writes nothing.
    #[must_use]
    pub fn dedup(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.dedup = Some((key.into(), window));
        self
    }
}

/// Builder for [`Bus`].
#[derive(Debug, Clone)]
pub struct BusBuilder {
    prefix: String,
    codec: Codec,
    max_payload: usize,
    header_limits: (usize, usize),
    connect_timeout: Duration,
    command_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsOptions>,
}

impl Default for BusBuilder {
    fn default() -> Self {
        Self {
            prefix: "bus".into(),
            codec: Codec::default(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            header_limits: (DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl BusBuilder {
    /// The defaults: prefix `bus`, MessagePack, 1 MiB payload limit, 5 s connect timeout, 10 s
    /// command timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Key prefix (default `bus`); checked with the name rules.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Payload codec for publishing (default MessagePack).
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Largest accepted encoded payload, in bytes (default 1 MiB).
    #[must_use]
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload = limit;
        self
    }

    /// Most headers per event and most header bytes (names and values together), checked at
    /// publish (defaults [`DEFAULT_MAX_HEADERS`], [`DEFAULT_MAX_HEADER_BYTES`]): an event over
    /// either is refused with [`Error::HeadersTooLarge`] and nothing is written.
    #[must_use]
    pub fn header_limits(mut self, max_count: usize, max_bytes: usize) -> Self {
        self.header_limits = (max_count, max_bytes);
        self
    }

    /// How long connecting may take before [`Error::Unreachable`] (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// TLS settings for `rediss://` URLs (default: the system's trusted roots, no client
    /// certificate). See [`TlsOptions`](crate::TlsOptions).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: crate::tls::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long a command may wait (including while reconnecting) before it fails (default 10 s).
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Connects and checks the server: an unreachable server, rejected credentials and a
    /// Redis older than 6.2 each give their own error. Warns when `maxmemory-policy` is not
    /// `noeviction`. URLs: `redis://[user:pass@]host:port[/db]`, `rediss://…` for TLS.
    pub async fn connect(self, url: &str) -> Result<Bus> {
        validate_name("prefix", &self.prefix)?;
        let redacted = redact(url);
        #[cfg(not(feature = "tls"))]
        if requests_tls(url) {
            // Without TLS compiled in, such a URL would connect in plaintext and send the
            // password in clear. Refuse instead of downgrading.
            return Err(Error::Config(format!(
                "{redacted} asks for TLS, but bus-core was built without its `tls` feature"
            )));
        }
        #[allow(unused_mut)]
        let mut config = Config::from_url(url)
            .map_err(|e| Error::Config(format!("bad Redis URL {redacted}: {}", e.details())))?;
        #[cfg(feature = "tls")]
        if requests_tls(url) {
            let options = self.tls.clone().unwrap_or_default();
            config.tls = Some(options.config()?);
        }
        let client = build_client(config, self.connect_timeout, self.command_timeout)?;
        let init =
            tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), client.init());
        match init.await {
            Ok(Ok(_task)) => {}
            Ok(Err(e)) => return Err(connect_error(&redacted, &e)),
            Err(_) => {
                let _ = client.quit().await;
                return Err(Error::Unreachable {
                    url: redacted,
                    reason: "connection timed out".into(),
                });
            }
        }
        if let Err(e) = check_server(&client, &redacted).await {
            let _ = client.quit().await;
            return Err(e);
        }
        Ok(Bus {
            inner: Arc::new(BusInner {
                client,
                prefix: self.prefix,
                codec: self.codec,
                max_payload: self.max_payload,
                header_limits: self.header_limits,
                url: redacted,
                command_timeout: self.command_timeout,
                waiters: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

pub(crate) fn build_client(
    config: Config,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> Result<Client> {
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        // Reconnect forever with backoff: a finite policy leaves the client dead for good once it
        // is used up.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build Redis client: {}", e.details())))
}

fn connect_error(url: &str, e: &fred::error::Error) -> Error {
    let text = e.details().to_owned();
    let lower = text.to_ascii_lowercase();
    #[cfg(feature = "tls")]
    let tls_kind = *e.kind() == fred::error::ErrorKind::Tls;
    #[cfg(not(feature = "tls"))]
    let tls_kind = false;
    if tls_kind || lower.contains("certificate") || lower.contains("handshake") {
        return Error::Tls {
            url: url.to_owned(),
            reason: text,
        };
    }
    if *e.kind() == fred::error::ErrorKind::Auth
        || text.starts_with("WRONGPASS")
        || text.starts_with("NOAUTH")
        || text.contains("invalid username-password")
    {
        Error::Auth {
            url: url.to_owned(),
            reason: text,
        }
    } else {
        Error::Unreachable {
            url: url.to_owned(),
            reason: format!("{:?}: {text}", e.kind()),
        }
    }
}

async fn check_server(client: &Client, url: &str) -> Result<()> {
    let info: String = match client.info(Some(fred::types::InfoKind::Server)).await {
        Ok(info) => info,
        // A least-privilege ACL user may not run INFO: the connection works, the version just
        // cannot be checked here (an older server fails later, on the first stream command).
        Err(e) if e.details().starts_with("NOPERM") => {
            tracing::warn!(
                url,
                "INFO is not permitted for this user; cannot check that Redis is 6.2 or newer"
            );
            return Ok(());
        }
        Err(e) => return Err(connect_error(url, &e)),
    };
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    if !version_at_least(&version, MIN_REDIS_VERSION) {
        return Err(Error::UnsupportedServer {
            url: url.to_owned(),
            version: if version.is_empty() {
                "unknown".into()
            } else {
                version
            },
            required: "6.2",
        });
    }
    let policy: std::result::Result<Vec<String>, _> = client
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["GET", "maxmemory-policy"],
        )
        .await;
    match policy {
        Ok(v) if v.len() == 2 && v[1] != "noeviction" => tracing::warn!(
            policy = %v[1],
            "Redis maxmemory-policy is not noeviction: Redis may evict streams and consumer groups \
             under memory pressure, losing events"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read maxmemory-policy (CONFIG GET refused?)"),
    }
    Ok(())
}

/// `"7.0.15"` ≥ `(6, 2)`?
pub(crate) fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Removes the password from a Redis URL for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    redact_url(url)
}

/// Whether a URL's scheme asks for TLS (`rediss://`, `rediss-cluster://`, `valkeys://`, …).
fn requests_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("").to_ascii_lowercase();
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// The longest de-duplication window: 100 years, far below what Redis accepts as a TTL.
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A de-duplication window must be at least 1 ms and at most [`MAX_DEDUP_WINDOW`], checked before
/// anything is written.
fn validate_dedup_window(window: Duration) -> Result<()> {
    if window < Duration::from_millis(1) || window > MAX_DEDUP_WINDOW {
        return Err(Error::Config(format!(
            "de-duplication window {window:?} is outside 1 ms ..= {MAX_DEDUP_WINDOW:?}"
        )));
    }
    Ok(())
}

/// A Redis URL with its secrets replaced by `***`: the password in the user part
/// (`redis://user:***@host`) and the value of any query parameter whose name mentions a password
/// (`?sentinelPassword=***`). Use it whenever a URL is printed or logged; the bus does for every
/// error and its `Debug` output.
///
/// ```
/// assert_eq!(
///     bus_core::redact_url("rediss://app:s3cret@redis.internal:6380/0"),
///     "rediss://app:***@redis.internal:6380/0"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = base.to_owned();
    if let Some(scheme_end) = base.find("://") {
        let rest = &base[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some((user, _password)) = userinfo.split_once(':') {
                out = format!("{}{user}:***@{}", &base[..scheme_end + 3], &rest[at + 1..]);
            }
        }
    }
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An encoded entry ready for XADD.
pub(crate) struct Prepared {
    pub(crate) key: String,
    pub(crate) event_id: String,
    pub(crate) fields: Vec<(fred::types::Key, Value)>,
}

impl Bus {
    /// Connects with the default settings; see [`BusBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Bus> {
        BusBuilder::new().connect(url).await
    }

    /// A builder for custom settings.
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key of an event's stream (`<prefix>:{<stream>}:stream`).
    pub fn stream_key(&self, stream: &str) -> Result<String> {
        validate_name("stream", stream)?;
        Ok(StreamKeys::new(&self.inner.prefix, stream)
            .stream()
            .to_owned())
    }

    /// The Redis key of a group's dead-letter stream (`<prefix>:{<stream>}:dlq:<group>`).
    pub fn dead_letter_key(&self, stream: &str, group: &str) -> Result<String> {
        validate_name("stream", stream)?;
        validate_name("group", group)?;
        Ok(StreamKeys::new(&self.inner.prefix, stream).dead_letter(group))
    }

    pub(crate) fn keys(&self, stream: &str) -> StreamKeys {
        StreamKeys::new(&self.inner.prefix, stream)
    }

    /// A new worker on this bus; add subscribers and run it.
    pub fn worker(&self) -> Worker {
        Worker::new(self)
    }

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
        let payload = self.inner.codec.encode(event)?;
        if payload.len() > self.inner.max_payload {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                limit: self.inner.max_payload,
            });
        }
        let event_id = uuid::Uuid::now_v7().to_string();
        let headers = traced_headers(&opts.headers);
        let (max_count, max_bytes) = self.inner.header_limits;
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
            &event_id,
            E::NAME,
            now_ms(),
            self.inner.codec,
            payload,
            &headers,
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
        let entry_id: String = self
            .inner
            .client
            .xadd(p.key.as_str(), false, None, "*", p.fields)
            .await?;
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
        // One pipeline on the client's one connection: WAIT counts this connection's writes.
        let pipeline = self.inner.client.pipeline();
        let () = pipeline
            .xadd(p.key.as_str(), false, None, "*", p.fields)
            .await?;
        let () = pipeline
            .wait(i64::from(replicas), timeout.as_millis().max(1) as i64)
            .await?;
        let (entry_id, acked): (String, i64) = pipeline.all().await?;
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
            &self.inner.client,
            vec![dedup_key, p.key],
            args,
        )
        .await?;
        let (fresh, stored): (i64, String) = reply.convert()?;
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
        // One key for the whole batch: clones share its bytes.
        let key = fred::types::Key::from(self.keys(E::STREAM).lane(opts.priority));
        let pipeline = self.inner.client.pipeline();
        let mut event_ids = Vec::with_capacity(encoded.len());
        for (event_id, fields) in encoded {
            let () = pipeline.xadd(key.clone(), false, None, "*", fields).await?;
            event_ids.push(event_id);
        }
        let entry_ids: Vec<String> = pipeline.all().await?;
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

    /// The underlying Redis client (for tests and tools; most users never need it).
    #[doc(hidden)]
    pub fn redis(&self) -> &Client {
        &self.inner.client
    }

    /// Closes the connection. Clones of this handle stop working too.
    pub async fn close(&self) {
        let _ = self.inner.client.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("redis://user@h:1"), "redis://user@h:1");
        assert_eq!(
            redact(
                "redis-sentinel://:pw@h:26379?sentinelServiceName=m&sentinelPassword=spw&node=h2:1"
            ),
            "redis-sentinel://:***@h:26379?sentinelServiceName=m&sentinelPassword=***&node=h2:1"
        );
    }

    #[test]
    fn compares_versions() {
        assert!(version_at_least("7.0.15", (6, 2)));
        assert!(version_at_least("6.2.0", (6, 2)));
        assert!(!version_at_least("6.0.9", (6, 2)));
        assert!(!version_at_least("5.0.7", (6, 2)));
        assert!(!version_at_least("", (6, 2)));
    }
}
