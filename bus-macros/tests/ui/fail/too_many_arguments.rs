use bus_core::{subscriber, Context, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

#[subscriber(group = "billing")]
async fn charge(_e: OrderPlaced, _ctx: &Context, _retries: u32) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
