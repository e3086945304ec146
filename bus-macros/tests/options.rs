//! Every `SubscriberOptions` setting is reachable from `#[subscriber(...)]` and carries the value
//! written there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus_core::{
    subscriber, Context, Event, HandlerError, StartFrom, Subscriber, SubscriberOptions,
    UnknownTypes,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    id: u64,
}

static CHARGED: AtomicU64 = AtomicU64::new(0);

#[subscriber(
    group = "billing",
    concurrency = 8,
    max_attempts = 7,
    visibility_timeout = "45s",
    start_from = "new",
    block_timeout = "750ms",
    backoff_min = "200ms",
    backoff_max = "2m",
    track_status,
    blocking,
    status_ttl = "1h",
    status_safety_ttl = "2d",
    prefetch = 64,
    handler_timeout = "10s",
    unknown_types = "dead_letter",
    max_held = 100,
    max_entry_bytes = 4_194_304,
    max_dead_letters = 0,
    max_result_bytes = 1024
)]
async fn charge(order: OrderPlaced, ctx: &Context) -> Result<u64, HandlerError> {
    CHARGED.fetch_add(order.id, Ordering::Relaxed);
    Ok(u64::from(ctx.attempt()))
}

#[subscriber(group = "defaults")]
async fn defaults(_order: OrderPlaced) {}

#[subscriber(group = "safety-only", status_safety_ttl = "30d")]
async fn safety_only(_order: OrderPlaced) {}

#[subscriber(
    group = "short-names",
    start = "beginning",
    timeout = "3s",
    track_status = false,
    blocking = false
)]
async fn short_names(_order: OrderPlaced) {}

#[test]
fn every_option_carries_its_value() {
    let o = charge::subscriber().options();
    assert_eq!(o.get_group(), "billing");
    assert_eq!(o.get_concurrency(), 8);
    assert_eq!(o.get_max_attempts(), 7);
    assert_eq!(o.get_visibility_timeout(), Duration::from_secs(45));
    assert_eq!(o.get_start_from(), StartFrom::NewEvents);
    assert_eq!(o.get_block_timeout(), Duration::from_millis(750));
    assert_eq!(o.get_backoff_min(), Duration::from_millis(200));
    assert_eq!(o.get_backoff_max(), Duration::from_secs(120));
    assert!(o.get_track_status());
    assert!(o.get_blocking());
    assert_eq!(
        o.get_status_ttl(),
        (Duration::from_secs(3600), Duration::from_secs(2 * 86_400))
    );
    assert_eq!(o.get_prefetch(), Some(64));
    assert_eq!(o.get_handler_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(o.get_unknown_types(), UnknownTypes::DeadLetter);
    assert_eq!(o.get_max_held(), Some(100));
    assert_eq!(o.get_max_entry_bytes(), 4_194_304);
    assert_eq!(o.get_max_dead_letters(), 0);
    assert_eq!(o.get_max_result_bytes(), 1024);
}

#[test]
fn options_not_given_keep_the_defaults() {
    assert_eq!(
        defaults::subscriber().options(),
        SubscriberOptions::new("defaults")
    );
}

#[test]
fn one_status_ttl_keeps_the_other_default() {
    let default_after_completion = SubscriberOptions::new("x").get_status_ttl().0;
    assert_eq!(
        safety_only::subscriber().options().get_status_ttl(),
        (default_after_completion, Duration::from_secs(30 * 86_400))
    );
}

#[test]
fn short_names_set_the_same_options() {
    let o = short_names::subscriber().options();
    assert_eq!(o.get_start_from(), StartFrom::Beginning);
    assert_eq!(o.get_handler_timeout(), Some(Duration::from_secs(3)));
    assert!(!o.get_track_status());
    assert!(!o.get_blocking());
}

#[tokio::test]
async fn handle_runs_the_handler() {
    let ctx = Context::builder().attempt(2).build();
    let output = charge::subscriber()
        .handle(OrderPlaced { id: 5 }, ctx)
        .await
        .expect("handler succeeds");
    assert_eq!(output, bus_core::HandlerOutput::default());
    assert_eq!(CHARGED.load(Ordering::Relaxed), 5);
}
