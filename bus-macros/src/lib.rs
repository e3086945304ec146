//! Procedural macros for Streambus. Use them through `bus_core` (`bus_core::subscriber`,
//! `bus_core::Event`), which re-exports them: generated code reaches `bus_core` only through its
//! hidden `::bus_core::__private` module, so the crate must be a dependency under that name.

mod args;
mod duration;
mod errors;
mod event;
mod expand;
mod fallback;
mod options;
mod paths;
mod signature;

use proc_macro::TokenStream;

/// Declares a subscriber: an `async fn` handling one event type for one consumer group.
///
/// ```
/// use bus_core::{subscriber, Context, HandlerError, Subscriber};
/// # use bus_core::Event;
/// # #[derive(serde::Serialize, serde::Deserialize, Event)]
/// # #[event(stream = "orders")]
/// # struct OrderPlaced { order_id: u64 }
///
/// #[subscriber(group = "billing", concurrency = 16, max_attempts = 5, visibility_timeout = "30s")]
/// async fn charge(order: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
///     let _ = (order.order_id, ctx.attempt());
///     Ok(())
/// }
///
/// // Register it with `worker.subscribe(charge::subscriber())`.
/// let options = charge::subscriber().options();
/// assert_eq!(options.get_group(), "billing");
/// assert_eq!(options.get_concurrency(), 16);
/// ```
///
/// # The handler
///
/// An `async fn` whose first argument is the event, by value (a type implementing
/// `bus_core::Event`), and whose optional second argument is `&Context`. It returns `()` or a
/// `Result<T, E>` with a serializable `T` and an `E` convertible into `HandlerError` (any
/// `bus_core::IntoHandlerResult`). Its future must be `Send`: the worker runs handlers on a
/// multi-threaded runtime. A handler that holds something like an `Rc` across an `.await` is a
/// compile error pointing at the handler, with a note naming the value.
///
/// The function stays callable as written (in unit tests, say). The macro adds a companion
/// struct of the same name whose `subscriber()` returns the value to register, and which
/// implements `bus_core::Subscriber`. Several handlers of different event types may name the
/// same group: registered in one worker, they share its reader and concurrency, and their options
/// must then be equal.
///
/// # Options
///
/// Every `bus_core::SubscriberOptions` setting can be given; those left out keep the defaults of
/// `SubscriberOptions::new`.
///
/// | option | value | sets | compile-time check |
/// |---|---|---|---|
/// | `group` (required) | string | `SubscriberOptions::new(group)` | a valid name (below) |
/// | `concurrency` | integer | `concurrency` | at least 1 |
/// | `max_attempts` | integer | `max_attempts` | 1 to 4294967295 |
/// | `visibility_timeout` | duration | `visibility_timeout` | at least `"100ms"` |
/// | `start_from` (or `start`) | `"beginning"` or `"new"` | `start_from(StartFrom::Beginning)` or `start_from(StartFrom::NewEvents)` | |
/// | `block_timeout` | duration | `block_timeout` | above zero |
/// | `backoff_min` | duration | `backoff_min` | |
/// | `backoff_max` | duration | `backoff_max` | not below `backoff_min` when both are given |
/// | `track_status` | switch: `track_status`, or `track_status = true` / `false` | `track_status` | |
/// | `blocking` | switch: `blocking`, or `blocking = true` / `false` | `blocking` (the handler runs on Tokio's blocking thread pool) | |
/// | `status_ttl` | duration | `status_ttl`'s first argument (after completion) | above zero |
/// | `status_safety_ttl` | duration | `status_ttl`'s second argument (safety) | above zero, not below `status_ttl` |
/// | `prefetch` | integer | `prefetch` | |
/// | `handler_timeout` (or `timeout`) | duration | `handler_timeout` | above zero |
/// | `unknown_types` | `"skip"` or `"dead_letter"` | `unknown_types(UnknownTypes::Skip)` or `unknown_types(UnknownTypes::DeadLetter)` | |
/// | `max_held` | integer | `max_held` | at least 1 |
/// | `max_entry_bytes` | integer | `max_entry_bytes` | at least 1 |
/// | `max_dead_letters` | integer (0 keeps all) | `max_dead_letters` | |
/// | `max_result_bytes` | integer | `max_result_bytes` | |
///
/// Durations are strings such as `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"7d"`, or sums such as
/// `"1m30s"`. Integers may use `_` separators (`max_entry_bytes = 4_194_304`). When only one of
/// `status_ttl` and `status_safety_ttl` is given, the other keeps its default (and, as with the
/// builder, the safety TTL is never below the other one).
///
/// A group name is non-empty, at most 128 bytes long, and has no `{`, `}`, whitespace or control
/// characters: the rules of `bus_core::validate_name`, from the same source.
///
/// ```
/// # use bus_core::{subscriber, Event, Subscriber, UnknownTypes};
/// # use std::time::Duration;
/// # #[derive(serde::Serialize, serde::Deserialize, Event)]
/// # #[event(stream = "orders")]
/// # struct OrderPlaced { order_id: u64 }
/// #[subscriber(
///     group = "receipts",
///     track_status,
///     status_ttl = "1h",
///     prefetch = 64,
///     max_held = 100,
///     timeout = "30s",
///     unknown_types = "dead_letter",
/// )]
/// async fn send_receipt(order: OrderPlaced) -> Result<String, std::io::Error> {
///     Ok(format!("receipt for order {}", order.order_id))
/// }
///
/// let options = send_receipt::subscriber().options();
/// assert!(options.get_track_status());
/// assert_eq!(options.get_status_ttl().0, Duration::from_secs(3600));
/// assert_eq!(options.get_prefetch(), Some(64));
/// assert_eq!(options.get_max_held(), Some(100));
/// assert_eq!(options.get_handler_timeout(), Some(Duration::from_secs(30)));
/// assert_eq!(options.get_unknown_types(), UnknownTypes::DeadLetter);
/// ```
///
/// # Errors
///
/// Mistakes are compile errors pointing at the offending token, all reported in one build:
/// unknown or duplicate options, a value of the wrong kind or out of range, a bad duration or
/// group name, a missing `group`; a function that is not `async`, is `unsafe` or generic, takes
/// `self`, has no event argument, takes the event by reference or the context by value, or has
/// more than two arguments. The function is still emitted as written, with stand-ins for the
/// generated items, so that uses of the function and of `handler::subscriber()` add no errors of
/// their own.
///
/// Set `BUS_MACROS_DEBUG=1` while building to print the expansion.
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::subscriber(args.into(), item.into()).into()
}

/// Derives `bus_core::Event`: binds a serde type to the stream it is published to.
///
/// ```
/// use bus_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(stream = "orders", name = "order.placed")]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// assert_eq!(OrderPlaced::STREAM, "orders");
/// assert_eq!(OrderPlaced::NAME, "order.placed");
/// ```
///
/// - `stream` (required): the stream, checked at compile time with the rules of
///   `bus_core::validate_name` (non-empty, at most 128 bytes, no `{`, `}`, whitespace or control
///   characters).
/// - `name`: the type name written in every entry; defaults to the type's name.
///
/// The type must not be generic, and must implement `Serialize` and `Deserialize` (the
/// supertraits of `Event`). On invalid attributes the derive reports them and still implements
/// `Event` with placeholder values (the build fails anyway), so that uses of the type as an event
/// add no errors of their own.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::derive(input.into()).into()
}
