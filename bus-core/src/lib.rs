//! # Streambus
//!
//! Reliable background work and domain events on Redis Streams.
//!
//! Services publish events with one call; each downstream service subscribes with its own
//! consumer group, so every service sees every event (fan-out) while the worker processes of one
//! service share its load. Delivery is **at least once**: an event is acknowledged only after its
//! handler returned `Ok`; a worker that dies leaves the event pending in Redis, to be delivered
//! again. Handlers must therefore be idempotent — key their side effects by
//! [`Context::event_id`].
//!
//! ## Usage
//!
//! ```no_run
//! use bus_core::{subscriber, Bus, Context, Event, HandlerError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[event(stream = "orders")]
//! struct OrderPlaced {
//!     order_id: u64,
//!     cents: u64,
//! }
//!
//! #[subscriber(group = "billing", concurrency = 16, max_attempts = 5, visibility_timeout = "30s")]
//! async fn charge(order: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
//!     println!("charging order {} (attempt {})", order.order_id, ctx.attempt());
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> bus_core::Result<()> {
//!     let bus = Bus::connect("redis://127.0.0.1:6379").await?;
//!     bus.publish(&OrderPlaced { order_id: 1, cents: 4200 }).await?;
//!     bus.worker()
//!         .subscribe(charge::subscriber())
//!         .run(bus_core::shutdown_signal())
//!         .await
//! }
//! ```
//!
//! The handler stays an ordinary function, callable in unit tests:
//!
//! ```
//! # use bus_core::{subscriber, Context, Event, HandlerError, Subscriber};
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, Event)]
//! # #[event(stream = "orders")]
//! # struct OrderPlaced { order_id: u64 }
//! #[subscriber(group = "billing")]
//! async fn charge(order: OrderPlaced, _ctx: &Context) -> Result<(), HandlerError> {
//!     if order.order_id == 0 { return Err(HandlerError::reject("no order id")); }
//!     Ok(())
//! }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ctx = Context::builder().attempt(1).build();
//! assert!(charge(OrderPlaced { order_id: 0 }, &ctx).await.unwrap_err().is_reject());
//! assert_eq!(charge::subscriber().options().get_group(), "billing");
//! # }
//! ```
//!
//! ## Feature flags
//!
//! - `macros` (default): `#[subscriber]` and `#[derive(Event)]`.
//! - `tls` (default): `rediss://` URLs over rustls (ring provider; no system OpenSSL needed), with
//!   the system's trusted roots or a private CA and client certificates ([`TlsOptions`]). Without
//!   it, a `rediss://` URL is refused rather than connected in plaintext.
//! - `test-util`: the `testing` module — throwaway `redis-server` processes and key clean-up.
//! - `opentelemetry`: trace context propagation. Every publish writes the OpenTelemetry context
//!   of the current `tracing` span into the event's headers through the global text-map
//!   propagator (W3C `traceparent`/`tracestate` with `TraceContextPropagator`; headers set by the
//!   caller win), and the worker's `handle` span (fields: stream, group, event id, entry id,
//!   attempt) takes the extracted context as its parent, so handlers continue the publisher's
//!   trace across processes, retries and replays. Needs `tracing_opentelemetry::layer()` in the
//!   subscriber and `opentelemetry::global::set_text_map_propagator(...)` at start-up; without a
//!   propagator nothing is written.
//!
//! ## Supported Rust versions
//!
//! The minimum supported Rust version is 1.88 (that of the `fred` dependency tree). It may rise in
//! a minor release.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[allow(unused_extern_crates)]
extern crate self as bus_core;

mod bus;
mod codec;
mod conn;
mod connect;
mod dead_letter;
mod delayed;
mod envelope;
mod error;
mod event;
mod inspect;
mod metrics;
mod names;
#[cfg(feature = "opentelemetry")]
mod otel;
mod publish;
mod redis;
mod shutdown;
mod status;
mod subscriber;
#[cfg(feature = "test-util")]
pub mod testing;
mod time;
#[cfg(feature = "tls")]
mod tls;
mod trim;
mod waiters;
mod worker;

pub use bus::{
    Bus, BusBuilder, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_PAYLOAD,
};
pub use codec::{Codec, MAX_PAYLOAD_DEPTH};
pub use connect::redact_url;
pub use dead_letter::{DeadLetter, DeadLetters};
pub use delayed::Scheduled;
pub use envelope::EnvelopeVersion;
pub use error::{Action, BoxError, Error, HandlerError, RedisError, Result};
pub use event::Event;
pub use inspect::{GroupInfo, StreamInfo, STALE_AFTER};
pub use names::{validate_name, Priority, MAX_NAME_LEN};
pub use publish::{PublishOptions, Published, MAX_DEDUP_WINDOW};
pub use shutdown::shutdown_signal;
pub use status::{GroupStatus, State};
pub use subscriber::{
    subscriber_fn, Context, ContextBuilder, FnSubscriber, HandlerOutput, HandlerResult,
    IntoHandlerResult, StartFrom, Subscriber, SubscriberOptions, UnknownTypes,
};
#[cfg(feature = "tls")]
pub use tls::TlsOptions;
pub use trim::{Retention, TRIM_BATCH};
pub use worker::{default_consumer_name, Worker, WorkerHandle};

#[cfg(feature = "macros")]
pub use bus_macros::{subscriber, Event};

/// The most used items: `use bus_core::prelude::*;`.
pub mod prelude {
    pub use crate::{Bus, Context, Event, HandlerError, Subscriber, SubscriberOptions, Worker};
    #[cfg(feature = "macros")]
    pub use bus_macros::subscriber;
}

/// Paths the macros expand to. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::subscriber::{
        Context, HandlerResult, IntoHandlerResult, StartFrom, Subscriber, SubscriberOptions,
        UnknownTypes,
    };
    pub use crate::Event;
    pub use futures::future::BoxFuture;
    pub use serde::{de::DeserializeOwned, Serialize};
    pub use std::boxed::Box;
    pub use std::time::Duration;
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
