use bus_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
struct NoStream {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "has space")]
struct BadStream {
    id: u64,
}

fn main() {}
