use bus_core::{subscriber, Event, HandlerError};
use serde::Serialize;

// Events are decoded from the stream, so they must be `DeserializeOwned`. rustc reports it at the
// type and again where the type is used as an event (here, the handler's argument).
#[derive(Serialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

#[subscriber(group = "billing")]
async fn charge(_e: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
