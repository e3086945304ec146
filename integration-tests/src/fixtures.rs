//! The events most tests publish. A test that needs its own shape defines it next to the test;
//! these two cover the common case of "some event with a number" on a jobs or an orders stream.

use bus_core::Event;
use serde::{Deserialize, Serialize};

/// A job on the `jobs` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(stream = "jobs")]
pub struct Job {
    pub n: u64,
}

/// An order on the `orders` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(stream = "orders")]
pub struct Order {
    pub n: u64,
}
