// The handler shapes `#[subscriber]` accepts; every option is covered by tests/options.rs.
use bus_core::{subscriber, Context, Event, HandlerError, Subscriber};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(stream = "orders", name = "order.placed")]
pub struct OrderPlaced {
    pub id: u64,
}

/// Documented, public, with the context.
#[subscriber(group = "billing", concurrency = 16, visibility_timeout = "1m30s")]
pub async fn charge(event: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
    let _ = (event.id, ctx.attempt());
    Ok(())
}

#[subscriber(group = "email")]
async fn without_context(_event: OrderPlaced) -> Result<u64, std::io::Error> {
    Ok(1)
}

#[subscriber(group = "unit")]
async fn returns_unit(_event: OrderPlaced) {}

#[subscriber(group = "named-lifetime")]
async fn named_lifetime<'a>(_event: OrderPlaced, ctx: &'a Context) -> Result<&'static str, String> {
    let _ = ctx.event_id();
    Ok("done")
}

mod nested {
    use super::OrderPlaced;
    use bus_core::subscriber;

    #[subscriber(group = "crate-visible")]
    pub(crate) async fn audit(_event: OrderPlaced) {}
}

fn main() {
    assert_eq!(charge::subscriber().options().get_group(), "billing");
    assert_eq!(without_context::subscriber().options().get_group(), "email");
    assert_eq!(returns_unit::subscriber().options().get_group(), "unit");
    assert_eq!(named_lifetime::subscriber().options().get_group(), "named-lifetime");
    assert_eq!(nested::audit::subscriber().options().get_group(), "crate-visible");
    assert_eq!(<OrderPlaced as Event>::NAME, "order.placed");
    // The handler is still a plain function.
    let ctx = Context::builder().build();
    let fut = charge(OrderPlaced { id: 1 }, &ctx);
    drop(fut);
}
