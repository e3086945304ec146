//! Quickstart: an orders service publishes `OrderPlaced` events; billing, email and analytics
//! each handle every one of them in their own consumer group, here all in one process.
//!
//! Run: `cargo run -p examples --bin quickstart` (uses `REDIS_URL`, default
//! `redis://127.0.0.1:6379`; starts a throwaway `redis-server` if nothing answers there).
//! It prints per-group counts and exits 0 once every group has handled every event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus_core::{subscriber, Context, HandlerError};
use examples::OrderPlaced;

const EVENTS: u64 = 500;

static BILLED: AtomicU64 = AtomicU64::new(0);
static EMAILED: AtomicU64 = AtomicU64::new(0);
static COUNTED: AtomicU64 = AtomicU64::new(0);

#[subscriber(
    group = "billing",
    concurrency = 16,
    max_attempts = 5,
    visibility_timeout = "30s"
)]
async fn bill(order: OrderPlaced, ctx: &Context) -> Result<(), HandlerError> {
    tracing::debug!(
        order = order.order_id,
        cents = order.cents,
        event = ctx.event_id(),
        "billing"
    );
    BILLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[subscriber(group = "email", concurrency = 8)]
async fn send_receipt(order: OrderPlaced, _ctx: &Context) -> Result<(), HandlerError> {
    tracing::debug!(customer = %order.customer, "sending receipt");
    EMAILED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[subscriber(group = "analytics", concurrency = 32)]
async fn count(_order: OrderPlaced) -> Result<(), HandlerError> {
    COUNTED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() {
    examples::init_tracing();
    let prefix = bus_core::testing::unique_prefix("quickstart");
    let (bus, redis) = examples::connect(&prefix, true).await;
    println!(
        "Streambus quickstart: Redis {}, key prefix {prefix}",
        redis.url
    );

    let worker = bus
        .worker()
        .subscribe(bill::subscriber())
        .subscribe(send_receipt::subscriber())
        .subscribe(count::subscriber())
        .start()
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot start the worker: {e}");
            std::process::exit(1)
        });

    let started = Instant::now();
    let orders: Vec<OrderPlaced> = (0..EVENTS)
        .map(|i| OrderPlaced {
            order_id: i,
            customer: format!("customer-{}", i % 37),
            cents: 1_000 + i * 7,
        })
        .collect();
    for batch in orders.chunks(100) {
        if let Err(e) = bus.publish_batch(batch).await {
            eprintln!("publish failed: {e}");
            std::process::exit(1);
        }
    }
    println!("orders: published {EVENTS} OrderPlaced events");

    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = || {
        [
            ("billing", BILLED.load(Ordering::Relaxed)),
            ("email", EMAILED.load(Ordering::Relaxed)),
            ("analytics", COUNTED.load(Ordering::Relaxed)),
        ]
    };
    while counts().iter().any(|(_, n)| *n < EVENTS) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shutdown = worker.shutdown().await;
    let _ = bus_core::testing::delete_prefix(&bus).await;
    bus.close().await;
    drop(redis);
    let elapsed = started.elapsed();
    let mut ok = shutdown.is_ok();
    for (group, n) in counts() {
        println!("{group:>10}: handled {n}/{EVENTS}");
        ok &= n == EVENTS;
    }
    if ok {
        println!("every group handled every event in {:.0?}", elapsed);
    } else {
        eprintln!("not every group handled every event (shutdown: {shutdown:?})");
        std::process::exit(1);
    }
}
