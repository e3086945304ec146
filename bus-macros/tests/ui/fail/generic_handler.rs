use bus_core::{subscriber, Context, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

#[subscriber(group = "billing")]
async fn charge<E: Event>(_e: E) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {
    let _ = (OrderPlaced { id: 1 }.id, Context::builder());
}
