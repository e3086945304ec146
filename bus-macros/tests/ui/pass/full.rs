use bus_core::{subscriber, Context, Event, HandlerError, Subscriber};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(stream = "orders", name = "order.placed")]
pub struct OrderPlaced {
    pub id: u64,
}

#[subscriber(
    group = "billing",
    concurrency = 16,
    max_attempts = 5,
    visibility_timeout = "1m30s",
    block_timeout = "500ms",
    backoff_min = "100ms",
    backoff_max = "1m",
    timeout = "45s",
    start = "new"
)]
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

fn main() {
    let o = charge::subscriber().options();
    assert_eq!(o.group(), "billing");
    assert_eq!(o.get_concurrency(), 16);
    assert_eq!(o.get_max_attempts(), 5);
    assert_eq!(o.get_visibility_timeout(), std::time::Duration::from_secs(90));
    assert_eq!(o.get_block_timeout(), std::time::Duration::from_millis(500));
    assert_eq!(o.get_backoff(), (std::time::Duration::from_millis(100), std::time::Duration::from_secs(60)));
    assert_eq!(o.get_start_from(), bus_core::StartFrom::NewEvents);
    assert_eq!(o.get_handler_timeout(), Some(std::time::Duration::from_secs(45)));
    assert_eq!(without_context::subscriber().options().group(), "email");
    assert_eq!(returns_unit::subscriber().options().get_concurrency(), 16);
    assert_eq!(<OrderPlaced as Event>::NAME, "order.placed");
    // The handler is still a plain function.
    let ctx = Context::builder().build();
    let fut = charge(OrderPlaced { id: 1 }, &ctx);
    drop(fut);
}
