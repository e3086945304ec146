use bus_core::Event;
use serde::{Deserialize, Serialize};

// One error per type, and none from the stand-in impls the derive still emits.
#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct Envelope<T> {
    inner: T,
}

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct Borrowed<'a> {
    name: &'a str,
}

fn main() {}
