//! Procedural macros for Streambus. Use them through `bus_core` (`bus_core::subscriber`,
//! `bus_core::Event`), which re-exports them.

mod args;
mod event;
mod expand;
mod validate;

use proc_macro::TokenStream;

/// Declares a subscriber: an `async fn` handling one event type for one consumer group.
///
/// ```text
/// #[subscriber(group = "billing", concurrency = 16, max_attempts = 5, visibility_timeout = "30s")]
/// async fn charge(order: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> { Ok(()) }
/// ```
///
/// Options: `group` (required), `concurrency`, `max_attempts`, and the durations
/// `visibility_timeout`, `block_timeout`, `backoff_min`, `backoff_max`, `timeout` (the handler
/// timeout; written like `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`), and `start`
/// (`"beginning"` or `"new"`). Several handlers of different event types may name the same
/// group: registered in one worker, they share its reader and concurrency (their options must
/// then be equal). The first argument is the event (by value); an optional second one
/// is `&Context`. The function stays callable as written; the macro adds a companion type of the
/// same name whose `subscriber()` returns the value to register: `worker.subscribe(charge::subscriber())`.
///
/// Set `BUS_MACROS_DEBUG=1` while building to print the expansion.
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::subscriber(args.into(), item.into()).into()
}

/// Derives `bus_core::Event`: `#[event(stream = "orders")]`, optionally `name = "OrderPlaced"`
/// (default: the type's name).
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    event::derive(input.into()).into()
}
