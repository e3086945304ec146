//! Error types: [`Error`] for the bus itself, [`HandlerError`] for what a handler asks the bus to do
//! with an event it could not handle.

use std::fmt;
use std::time::Duration;

/// Boxed foreign error (kept boxed so upgrades of `fred`, `rmp-serde`, … do not change our API).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the bus (connecting, publishing, running workers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No Redis server answered at the configured address (refused, timed out, DNS failure).
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// The address, with any password removed.
        url: String,
        /// What the connection attempt reported.
        reason: String,
    },
    /// The TLS connection failed: the server's certificate is not trusted (wrong CA, wrong host
    /// name, expired), the server asks for a client certificate, or the handshake failed.
    #[error("TLS to Redis at {url} failed: {reason}")]
    Tls {
        /// The address, with any password removed.
        url: String,
        /// What the TLS layer reported.
        reason: String,
    },
    /// The server rejected the credentials (or requires some and none were given).
    #[error("Redis at {url} rejected the credentials: {reason}")]
    Auth {
        /// The address, with any password removed.
        url: String,
        /// The server's reply.
        reason: String,
    },
    /// The server is too old: Streambus needs Redis 6.2 or newer (XAUTOCLAIM, XPENDING IDLE).
    #[error("Redis {version} at {url} is too old: Streambus needs Redis {required} or newer")]
    UnsupportedServer {
        /// The address, with any password removed.
        url: String,
        /// The version the server reported.
        version: String,
        /// The oldest supported version.
        required: &'static str,
    },
    /// A stream, group or key-prefix name breaks the naming rules (nothing was written).
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `"stream"`, `"group"`, `"prefix"`, `"header"` …
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An encoded payload is larger than the configured limit (nothing was written).
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An event's headers are over the bus's limits (nothing was written).
    #[error("{count} headers of {bytes} bytes exceed the limits of {max_count} headers and {max_bytes} bytes")]
    HeadersTooLarge {
        /// Headers on the event (including trace headers the bus adds).
        count: usize,
        /// Their names and values, in bytes.
        bytes: usize,
        /// The configured most headers.
        max_count: usize,
        /// The configured most header bytes.
        max_bytes: usize,
    },
    /// The event could not be serialized.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// A stream entry could not be decoded into an event.
    #[error("cannot decode entry: {0}")]
    Decode(String),
    /// Invalid configuration (for example two subscribers for the same stream and group in one worker).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Waiting for an outcome took longer than allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The event was dead-lettered by the group a request waited for.
    #[error("group {group} gave up on the event: {error}")]
    Failed {
        /// The group.
        group: String,
        /// Its last error.
        error: String,
    },
    /// The group handled the event a request waited for, but did not keep the handler's result
    /// (it was over [`SubscriberOptions::max_result_bytes`](crate::SubscriberOptions::max_result_bytes),
    /// or the subscriber does not keep results).
    #[error("group {group} handled the event but kept no result: {reason}")]
    ResultNotKept {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// A publish with [`wait_for_replicas`](crate::PublishOptions::wait_for_replicas) was stored
    /// on the primary, but fewer replicas than asked confirmed it in time.
    #[error("event {event_id} (entry {entry_id}) reached {acked} of {wanted} replicas in time")]
    NotReplicated {
        /// The event id.
        event_id: String,
        /// The entry id on the primary.
        entry_id: String,
        /// Replicas that confirmed.
        acked: u32,
        /// Replicas asked for.
        wanted: u32,
    },
    /// A Redis command failed (connection lost, timeout, server error).
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
    /// A task of the bus itself failed (a worker task panicked, the waiters' subscription task
    /// stopped). Not caused by the caller's input; worth reporting as a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A Redis client error, kept opaque so the client library can change without breaking the API.
#[derive(Debug)]
pub struct RedisError(pub(crate) Box<fred::error::Error>);

impl RedisError {
    /// The server's or the client's error text.
    pub fn message(&self) -> &str {
        self.0.details()
    }

    /// True when the error means the connection is down or timed out (worth retrying later).
    pub fn is_connection(&self) -> bool {
        use fred::error::ErrorKind as K;
        matches!(
            self.0.kind(),
            K::IO | K::Timeout | K::Canceled | K::Cluster | K::Backpressure
        ) || self.0.details().starts_with("LOADING")
            || self.0.details().contains("channel closed")
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.0.kind(), self.0.details())
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl Error {
    /// A client error, wrapped so the client's type stays out of the public API.
    pub(crate) fn client(e: fred::error::Error) -> Self {
        Error::Redis(RedisError(Box::new(e)))
    }
}

/// Converts the Redis client's results into ours. A crate-private trait instead of
/// `From<fred::error::Error> for Error`, which would put the client's error type into the public
/// API (trait impls cannot be private).
pub(crate) trait ClientResult<T> {
    /// `Err(Error::Redis(…))` for a client error.
    fn client_err(self) -> Result<T>;
}

impl<T> ClientResult<T> for std::result::Result<T, fred::error::Error> {
    fn client_err(self) -> Result<T> {
        self.map_err(Error::client)
    }
}

impl Error {
    /// True for a lost connection or a timeout: the operation may succeed if tried again later.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Redis(e) if e.is_connection())
            || matches!(self, Error::Unreachable { .. })
    }

    /// True when Redis reports a missing stream or consumer group (`NOGROUP`).
    pub(crate) fn is_nogroup(&self) -> bool {
        matches!(self, Error::Redis(e) if e.message().contains("NOGROUP")
            || e.message().starts_with("UNBLOCKED the stream key no longer exists"))
    }
}

/// What a handler asks the bus to do with an event it did not handle successfully.
///
/// Any error converts into a [`HandlerError::retry`], so `?` works inside handlers. Use
/// [`HandlerError::reject`] for errors that can never succeed (the event goes to the dead-letter
/// stream at once) and [`HandlerError::retry_after`] to choose the delay.
///
/// ```
/// use bus_core::HandlerError;
/// use std::time::Duration;
///
/// fn classify(status: u16) -> Result<(), HandlerError> {
///     match status {
///         200 => Ok(()),
///         429 => Err(HandlerError::retry_after(Duration::from_secs(30), "rate limited")),
///         400 => Err(HandlerError::reject("invalid order")),
///         _ => Err(format!("upstream returned {status}").into()),
///     }
/// }
/// assert!(classify(200).is_ok());
/// assert!(classify(400).unwrap_err().is_reject());
/// ```
pub struct HandlerError {
    action: Action,
    source: BoxError,
}

/// The action a [`HandlerError`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Retry after the subscriber's backoff.
    Retry,
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Do not retry: dead-letter the event now.
    Reject,
}

impl HandlerError {
    /// A failure worth retrying after the subscriber's backoff.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self {
            action: Action::Retry,
            source: error.into(),
        }
    }

    /// A failure worth retrying after `delay`.
    pub fn retry_after(delay: Duration, error: impl Into<BoxError>) -> Self {
        Self {
            action: Action::RetryAfter(delay),
            source: error.into(),
        }
    }

    /// A permanent failure: the event goes to the group's dead-letter stream without further attempts.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        Self {
            action: Action::Reject,
            source: error.into(),
        }
    }

    /// The action this error asks for.
    pub fn action(&self) -> Action {
        self.action
    }

    /// True if this error asks for the event to be dead-lettered at once.
    pub fn is_reject(&self) -> bool {
        self.action == Action::Reject
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::retry(e)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("action", &self.action)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}
