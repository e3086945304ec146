// Generated code must not pick up the user's names: every item and local below shadows a name
// an expansion could use (std items, prelude traits, primitive types, bus_core items, locals).
#![allow(dead_code, non_camel_case_types, non_upper_case_globals)]

mod shadowing {
    use bus_core::{subscriber, Context as BusContext, HandlerError};
    use serde::{Deserialize, Serialize};

    struct Box;
    struct Duration;
    struct Pin;
    struct Option;
    struct str;
    struct Context;
    struct SubscriberOptions;
    struct StartFrom;
    struct UnknownTypes;
    struct BoxFuture;
    struct HandlerResult;
    trait Send {}
    trait Sync {}
    trait Future {}
    trait Event {}
    trait Subscriber {}
    trait IntoHandlerResult {}
    trait DeserializeOwned {}
    mod serde_json {}
    mod futures {}
    mod std {}

    const event: u8 = 0;
    const ctx: u8 = 0;
    const keep: u8 = 0;
    const output: u8 = 0;
    const options: u8 = 0;
    const after: u8 = 0;
    const safety: u8 = 0;
    const future: u8 = 0;

    // Transparent, so that serde's own derive does not need the `str` shadowed above.
    #[derive(Serialize, Deserialize, bus_core::Event)]
    #[serde(transparent)]
    #[event(stream = "orders")]
    pub struct OrderPlaced(pub u64);

    #[subscriber(
        group = "billing",
        start_from = "new",
        unknown_types = "dead_letter",
        visibility_timeout = "1m",
        status_ttl = "1h",
        track_status
    )]
    pub async fn charge(order: OrderPlaced, context: &BusContext) -> Result<(), HandlerError> {
        let _ = (order.0, context.attempt());
        Ok(())
    }
}

fn main() {
    use bus_core::Subscriber as _;
    let o = shadowing::charge::subscriber().options();
    assert_eq!(o.get_group(), "billing");
    assert_eq!(<shadowing::OrderPlaced as bus_core::Event>::STREAM, "orders");
}
