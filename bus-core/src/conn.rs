//! The connection every feature works on: the Redis client, the key prefix and the settings
//! chosen at connect. Features receive a [`Conn`], not the public [`Bus`](crate::Bus), so the
//! front door can sit on top of everything without anything reaching back up into it.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;

use crate::codec::Codec;
use crate::envelope::EnvelopeVersion;
use crate::names::StreamKeys;

/// A cheap handle (one `Arc`) on the connection and its settings.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: Arc<ConnInner>,
}

/// What a [`Conn`] holds.
pub(crate) struct ConnInner {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) codec: Codec,
    /// The entry format publishes write.
    pub(crate) envelope_version: EnvelopeVersion,
    pub(crate) max_payload: usize,
    /// Most headers and header bytes (names and values) per event.
    pub(crate) header_limits: (usize, usize),
    /// The server's URL with any password redacted.
    pub(crate) url: String,
    /// How long a command may take before the client gives up on it; blocking reads get this much
    /// on top of their block time, so a read never times out on the client while Redis still
    /// blocks (entries it then delivered would reach nobody).
    pub(crate) command_timeout: Duration,
}

impl Conn {
    pub(crate) fn new(inner: ConnInner) -> Self {
        Conn {
            inner: Arc::new(inner),
        }
    }

    /// The keys of one stream under this connection's prefix (the name must be valid).
    pub(crate) fn keys(&self, stream: &str) -> StreamKeys {
        StreamKeys::new(&self.inner.prefix, stream)
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Deref for Conn {
    type Target = ConnInner;

    fn deref(&self) -> &ConnInner {
        &self.inner
    }
}
