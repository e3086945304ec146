//! The [`Bus`] handle, the front door: built with [`BusBuilder`], it owns the connection and
//! the completion waiters. What it can do lives with each feature (`publish.rs`, `status.rs`,
//! `delayed.rs`, `dead_letter.rs`, `trim.rs`, `inspect.rs`, `worker/`), each adding its methods
//! in an `impl Bus` block; none of them is imported here.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::Config;

use crate::codec::Codec;
use crate::conn::{Conn, ConnInner};
use crate::connect::{build_client, check_server, connect_error, redact, requests_tls};
use crate::envelope::EnvelopeVersion;
use crate::error::{Error, Result};
use crate::names::{validate_name, StreamKeys};
use crate::waiters::Waiters;

/// Default payload limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Default most headers per event.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default most header bytes (names and values) per event: 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

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
    pub(crate) conn: Conn,
    /// Pub/Sub completion waiters, set up on first use.
    pub(crate) waiters: Arc<tokio::sync::OnceCell<Waiters>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.conn.url)
            .field("prefix", &self.conn.prefix)
            .field("codec", &self.conn.codec)
            .field("max_payload", &self.conn.max_payload)
            .finish()
    }
}

/// Builder for [`Bus`].
#[derive(Debug, Clone)]
pub struct BusBuilder {
    prefix: String,
    codec: Codec,
    envelope_version: EnvelopeVersion,
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
            envelope_version: EnvelopeVersion::default(),
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
    /// The defaults: prefix `bus`, MessagePack, envelope version 2, 1 MiB payload limit, 5 s connect timeout, 10 s
    /// command timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry format publishes write (default [`EnvelopeVersion::V2`], one field per
    /// entry). Workers read every version whatever this says; see [`EnvelopeVersion`] for when
    /// to write version 1 during a rolling upgrade.
    #[must_use]
    pub fn envelope_version(mut self, version: EnvelopeVersion) -> Self {
        self.envelope_version = version;
        self
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
            conn: Conn::new(ConnInner {
                client,
                prefix: self.prefix,
                codec: self.codec,
                envelope_version: self.envelope_version,
                max_payload: self.max_payload,
                header_limits: self.header_limits,
                url: redacted,
                command_timeout: self.command_timeout,
            }),
            waiters: Arc::new(tokio::sync::OnceCell::new()),
        })
    }
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
        &self.conn.prefix
    }

    /// The Redis key of an event's stream (`<prefix>:{<stream>}:stream`).
    pub fn stream_key(&self, stream: &str) -> Result<String> {
        validate_name("stream", stream)?;
        Ok(StreamKeys::new(&self.conn.prefix, stream)
            .stream()
            .to_owned())
    }

    /// The Redis key of a group's dead-letter stream (`<prefix>:{<stream>}:dlq:<group>`).
    pub fn dead_letter_key(&self, stream: &str, group: &str) -> Result<String> {
        validate_name("stream", stream)?;
        validate_name("group", group)?;
        Ok(StreamKeys::new(&self.conn.prefix, stream).dead_letter(group))
    }

    pub(crate) fn keys(&self, stream: &str) -> StreamKeys {
        self.conn.keys(stream)
    }

    /// Closes the connection. Clones of this handle stop working too.
    pub async fn close(&self) {
        let _ = self.conn.client.quit().await;
    }
}
