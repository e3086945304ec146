use bus_core::{subscriber, Event, Subscriber};
use serde::{Deserialize, Serialize};

// The stream name is the only error: the uses of `OrderPlaced` as an event below must not add
// "`Event` is not implemented" errors.
#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders{eu}")]
struct OrderPlaced {
    id: u64,
}

#[subscriber(group = "billing")]
async fn charge(_e: OrderPlaced) {}

fn needs_event<E: Event>() {}

fn needs_subscriber<S: Subscriber>(_: S) {}

fn main() {
    needs_event::<OrderPlaced>();
    needs_subscriber(charge::subscriber());
}
