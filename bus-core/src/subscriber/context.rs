//! The per-delivery [`Context`] a handler receives, its [`ContextBuilder`] for tests, and how the
//! worker makes one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a handler knows about the delivery it is running.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

#[derive(Debug, Clone)]
struct ContextInner {
    event_id: String,
    event_type: String,
    entry_id: String,
    names: ContextNames,
    attempt: u32,
    published_at_ms: u64,
    headers: Vec<(String, String)>,
    keep_result: bool,
}

impl Context {
    /// A builder for contexts, for unit-testing handlers without Redis.
    ///
    /// ```
    /// let ctx = bus_core::Context::builder().attempt(3).header("tenant", "acme").build();
    /// assert_eq!(ctx.attempt(), 3);
    /// assert_eq!(ctx.header("tenant"), Some("acme"));
    /// ```
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// The producer-made event id (stable across retries and replays: use it for idempotency).
    pub fn event_id(&self) -> &str {
        &self.inner.event_id
    }

    /// The event's type name.
    pub fn event_type(&self) -> &str {
        &self.inner.event_type
    }

    /// The stream entry id.
    pub fn entry_id(&self) -> &str {
        &self.inner.entry_id
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.inner.names.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.inner.names.group
    }

    /// This worker's consumer name.
    pub fn consumer(&self) -> &str {
        &self.inner.names.consumer
    }

    /// Which attempt of this group at this event this is; the first is 1. Attempts that failed,
    /// timed out or crashed their process while running alone count; an attempt cut short by a
    /// crash of a process that was running other handlers too does not (any of them may have
    /// caused it), so a redelivery can carry the same number again.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// When the producer published the event (producer clock).
    pub fn published_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.inner.published_at_ms)
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the handler's returned value is kept (the subscriber tracks status).
    pub fn keeps_result(&self) -> bool {
        self.inner.keep_result
    }

    /// All headers, in publish order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.inner.headers
    }
}

/// Builds a [`Context`]; see [`Context::builder`].
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    inner: ContextInner,
}

impl Default for ContextBuilder {
    fn default() -> Self {
        Self {
            inner: ContextInner {
                event_id: "00000000-0000-0000-0000-000000000000".into(),
                event_type: String::new(),
                entry_id: "0-1".into(),
                names: ContextNames::new("test", "test", "test"),
                attempt: 1,
                published_at_ms: 0,
                headers: Vec::new(),
                keep_result: false,
            },
        }
    }
}

macro_rules! setter {
    ($name:ident, $ty:ty, $doc:literal) => {
        #[doc = $doc]
        #[must_use]
        pub fn $name(mut self, v: impl Into<$ty>) -> Self {
            self.inner.$name = v.into();
            self
        }
    };
}

impl ContextBuilder {
    setter!(event_id, String, "Sets the event id.");
    setter!(event_type, String, "Sets the event type name.");
    setter!(entry_id, String, "Sets the entry id.");

    /// Sets the stream.
    #[must_use]
    pub fn stream(mut self, v: impl AsRef<str>) -> Self {
        self.inner.names.stream = Arc::from(v.as_ref());
        self
    }

    /// Sets the group.
    #[must_use]
    pub fn group(mut self, v: impl AsRef<str>) -> Self {
        self.inner.names.group = Arc::from(v.as_ref());
        self
    }

    /// Sets the consumer name.
    #[must_use]
    pub fn consumer(mut self, v: impl AsRef<str>) -> Self {
        self.inner.names.consumer = Arc::from(v.as_ref());
        self
    }

    /// Sets the attempt number.
    #[must_use]
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.inner.attempt = attempt;
        self
    }

    /// Sets the publish time (Unix ms).
    #[must_use]
    pub fn published_at_ms(mut self, ms: u64) -> Self {
        self.inner.published_at_ms = ms;
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.headers.push((name.into(), value.into()));
        self
    }

    /// The context.
    pub fn build(self) -> Context {
        Context {
            inner: Arc::new(self.inner),
        }
    }
}

/// The names every context of one subscriber shares (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct ContextNames {
    stream: Arc<str>,
    group: Arc<str>,
    consumer: Arc<str>,
}

impl ContextNames {
    pub(crate) fn new(stream: &str, group: &str, consumer: &str) -> Self {
        Self {
            stream: Arc::from(stream),
            group: Arc::from(group),
            consumer: Arc::from(consumer),
        }
    }
}

/// Builds the context for one delivery.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_context(
    event_id: String,
    event_type: String,
    entry_id: String,
    names: &ContextNames,
    attempt: u32,
    published_at_ms: u64,
    headers: Vec<(String, String)>,
    keep_result: bool,
) -> Context {
    Context {
        inner: Arc::new(ContextInner {
            event_id,
            event_type,
            entry_id,
            names: names.clone(),
            attempt,
            published_at_ms,
            headers,
            keep_result,
        }),
    }
}
