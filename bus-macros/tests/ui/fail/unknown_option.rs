use bus_core::{subscriber, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

#[subscriber(group = "billing", retries = 3)]
async fn charge(_e: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
