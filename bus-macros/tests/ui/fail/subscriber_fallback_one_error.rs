use bus_core::{subscriber, Event, Subscriber};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

// `max_held = 0` is the only error: the function, `charge::subscriber()` and its use as a
// `Subscriber` below must not add errors of their own.
#[subscriber(group = "billing", max_held = 0)]
async fn charge(_e: OrderPlaced) {}

fn needs_subscriber<S: Subscriber>(_: S) {}

fn main() {
    needs_subscriber(charge::subscriber());
    let _future = charge(OrderPlaced { id: 1 });
}
