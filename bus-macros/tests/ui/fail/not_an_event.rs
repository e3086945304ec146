use bus_core::{subscriber, HandlerError};

#[subscriber(group = "billing")]
async fn charge(_e: String) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
