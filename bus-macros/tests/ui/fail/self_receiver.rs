use bus_core::{subscriber, Context, Event, HandlerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

struct Billing;

impl Billing {
    #[subscriber(group = "billing")]
    async fn charge(&self, _e: OrderPlaced, _ctx: &Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let _ = Billing.charge(OrderPlaced { id: 1 }, &Context::builder().build());
}
