//! The handlers of one consumer group: subscribers with their event type erased, dispatched by
//! the entry's `type` field.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::subscriber::{Context, HandlerResult, Subscriber, SubscriberOptions};

/// What running one entry through a handler gave.
pub(crate) enum Dispatched {
    Done(HandlerResult),
    /// The payload does not decode into the handler's event type.
    Undecodable(String),
}

/// A subscriber with its event type erased, so one group can hold handlers of several types.
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn stream(&self) -> &'static str;
    fn event_name(&self) -> &'static str;
    fn options(&self) -> SubscriberOptions;
    fn dispatch(&self, envelope: Envelope, ctx: Context) -> BoxFuture<'_, Dispatched>;
}

impl<S: Subscriber> DynHandler for S {
    fn stream(&self) -> &'static str {
        <S::Event as Event>::STREAM
    }

    fn event_name(&self) -> &'static str {
        <S::Event as Event>::NAME
    }

    fn options(&self) -> SubscriberOptions {
        Subscriber::options(self)
    }

    fn dispatch(&self, envelope: Envelope, ctx: Context) -> BoxFuture<'_, Dispatched> {
        Box::pin(async move {
            match envelope.codec.decode::<S::Event>(&envelope.payload) {
                Ok(event) => Dispatched::Done(self.handle(event, ctx).await),
                Err(e) => Dispatched::Undecodable(e.to_string()),
            }
        })
    }
}

/// The handlers of one group on one stream, by event type, with the group's options.
pub(crate) struct HandlerSet {
    stream: &'static str,
    options: SubscriberOptions,
    by_type: HashMap<&'static str, Arc<dyn DynHandler>>,
}

impl HandlerSet {
    /// Groups subscribers by (stream, group). Handlers sharing a group must have equal options
    /// and distinct event types.
    pub(crate) fn group_all(handlers: Vec<Arc<dyn DynHandler>>) -> Result<Vec<HandlerSet>> {
        let mut sets: Vec<HandlerSet> = Vec::new();
        for h in handlers {
            let options = h.options();
            let found = sets
                .iter_mut()
                .find(|s| s.stream == h.stream() && s.options.get_group() == options.get_group());
            match found {
                None => sets.push(HandlerSet {
                    stream: h.stream(),
                    options,
                    by_type: HashMap::from([(h.event_name(), h)]),
                }),
                Some(set) => {
                    if set.options != options {
                        return Err(Error::Config(format!(
                            "handlers of group {} on stream {} have different options ({:?} and \
                             {:?}): handlers sharing a group share one reader, one concurrency \
                             budget and one set of options",
                            options.get_group(),
                            set.stream,
                            set.options,
                            options
                        )));
                    }
                    if set.by_type.contains_key(h.event_name()) {
                        return Err(Error::Config(format!(
                            "two handlers for event type {} in group {} on stream {}",
                            h.event_name(),
                            options.get_group(),
                            set.stream
                        )));
                    }
                    set.by_type.insert(h.event_name(), h);
                }
            }
        }
        Ok(sets)
    }

    pub(crate) fn stream(&self) -> &'static str {
        self.stream
    }

    pub(crate) fn options(&self) -> &SubscriberOptions {
        &self.options
    }

    /// The handler for an event type.
    pub(crate) fn get(&self, event_type: &str) -> Option<&Arc<dyn DynHandler>> {
        self.by_type.get(event_type)
    }

    /// The event types handled, for logs.
    pub(crate) fn types(&self) -> Vec<&'static str> {
        let mut t: Vec<&'static str> = self.by_type.keys().copied().collect();
        t.sort_unstable();
        t
    }
}
