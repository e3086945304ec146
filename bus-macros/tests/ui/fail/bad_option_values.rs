use bus_core::{subscriber, Context, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

// Every bad value is reported, each at its literal, in one build.
#[subscriber(
    group = "billing",
    concurrency = 0,
    max_held = 0,
    track_status = "yes",
    unknown_types = "drop",
    start_from = "end",
    status_ttl = "2h",
    status_safety_ttl = "1h",
    backoff_min = "10s",
    backoff_max = "1s",
    handler_timeout = "0s",
    max_attempts = 5000000000,
    prefetch = -1
)]
async fn charge(_e: OrderPlaced, _ctx: &Context) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
