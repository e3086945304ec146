//! The [`Event`] trait: a serializable type bound to a stream.

use serde::{de::DeserializeOwned, Serialize};

/// A domain event: a serde type published to one stream.
///
/// Derive it (the derive checks the stream name at compile time):
///
/// ```
/// use bus_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Event)]
/// #[event(stream = "orders")]          // optional: name = "OrderPlaced" (defaults to the type name)
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// assert_eq!(OrderPlaced::STREAM, "orders");
/// assert_eq!(OrderPlaced::NAME, "OrderPlaced");
/// ```
///
/// Several event types may share a stream. A subscriber handles the entries whose type name is its
/// event's [`NAME`](Event::NAME) and acknowledges the others without running (use a serde `enum` as
/// the event type to handle several kinds in one group).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stream this event is published to (see [`validate_name`](crate::validate_name)).
    const STREAM: &'static str;
    /// The type name written in every entry (field `type`).
    const NAME: &'static str;
}
