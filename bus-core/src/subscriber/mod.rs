//! Subscribers: the [`Subscriber`] trait the `#[subscriber]` macro implements, its
//! [`SubscriberOptions`], the per-delivery [`Context`], and [`subscriber_fn`] for closures.

use std::future::Future;
use std::marker::PhantomData;

use futures::future::BoxFuture;

use crate::error::HandlerError;
use crate::event::Event;

mod context;
mod options;

pub(crate) use context::{make_context, ContextNames};
pub use context::{Context, ContextBuilder};
pub use options::{StartFrom, SubscriberOptions, UnknownTypes};

/// What a handler run produced.
pub type HandlerResult = Result<HandlerOutput, HandlerError>;

/// The value a successful handler returned, MessagePack-encoded when the subscriber keeps results
/// (see [`SubscriberOptions::track_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerOutput {
    pub(crate) result: Option<Vec<u8>>,
}

/// A handler bound to one event type and one consumer group. `#[subscriber]` implements it; so
/// does [`subscriber_fn`].
pub trait Subscriber: Send + Sync + 'static {
    /// The event type handled.
    type Event: Event;

    /// Group and settings.
    fn options(&self) -> SubscriberOptions;

    /// Runs the handler for one delivery.
    fn handle(&self, event: Self::Event, ctx: Context) -> BoxFuture<'_, HandlerResult>;
}

/// Converts what a handler returns into a [`HandlerResult`]: `()`, or `Result<T, E>` for any
/// serializable `T` and any `E: Into<HandlerError>` (so any `std::error::Error`, `String` or
/// `&str`). The `T` is encoded (MessagePack) only when `keep_result` is set.
pub trait IntoHandlerResult {
    /// The conversion.
    fn into_handler_result(self, keep_result: bool) -> HandlerResult;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self, _keep_result: bool) -> HandlerResult {
        Ok(HandlerOutput::default())
    }
}

impl<T: serde::Serialize, E: Into<HandlerError>> IntoHandlerResult for Result<T, E> {
    fn into_handler_result(self, keep_result: bool) -> HandlerResult {
        match self {
            Ok(v) if keep_result => match rmp_serde::to_vec_named(&v) {
                Ok(bytes) => Ok(HandlerOutput {
                    result: Some(bytes),
                }),
                Err(e) => Err(HandlerError::reject(format!(
                    "cannot encode the handler's result: {e}"
                ))),
            },
            Ok(_) => Ok(HandlerOutput::default()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A [`Subscriber`] made from a closure; see [`subscriber_fn`].
pub struct FnSubscriber<E, F> {
    options: SubscriberOptions,
    f: F,
    _event: PhantomData<fn() -> E>,
}

impl<E, F> std::fmt::Debug for FnSubscriber<E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnSubscriber")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Makes a subscriber from options and an async closure taking the event and an owned
/// [`Context`].
///
/// ```
/// use bus_core::{subscriber_fn, Event, SubscriberOptions};
/// # #[derive(serde::Serialize, serde::Deserialize, Event)]
/// # #[event(stream = "orders")]
/// # struct OrderPlaced { order_id: u64 }
///
/// let audit = subscriber_fn(SubscriberOptions::new("audit"), |e: OrderPlaced, ctx| async move {
///     tracing::info!(order = e.order_id, attempt = ctx.attempt(), "audited");
///     Ok::<_, std::io::Error>(())
/// });
/// # let _ = audit;
/// ```
pub fn subscriber_fn<E, F, Fut, R>(options: SubscriberOptions, f: F) -> FnSubscriber<E, F>
where
    E: Event,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    FnSubscriber {
        options,
        f,
        _event: PhantomData,
    }
}

impl<E, F, Fut, R> Subscriber for FnSubscriber<E, F>
where
    E: Event,
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    type Event = E;

    fn options(&self) -> SubscriberOptions {
        self.options.clone()
    }

    fn handle(&self, event: E, ctx: Context) -> BoxFuture<'_, HandlerResult> {
        let keep = ctx.keeps_result();
        let fut = (self.f)(event, ctx);
        Box::pin(async move { fut.await.into_handler_result(keep) })
    }
}

/// A subscriber with some options replaced; see [`Worker::subscribe_with`](crate::Worker::subscribe_with).
pub(crate) struct Configured<S> {
    pub(crate) inner: S,
    pub(crate) options: SubscriberOptions,
}

impl<S: Subscriber> Subscriber for Configured<S> {
    type Event = S::Event;

    fn options(&self) -> SubscriberOptions {
        self.options.clone()
    }

    fn handle(&self, event: S::Event, ctx: Context) -> BoxFuture<'_, HandlerResult> {
        self.inner.handle(event, ctx)
    }
}
