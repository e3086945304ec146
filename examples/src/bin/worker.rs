//! Worker: one process of a consumer group handling `OrderPlaced` events. Start several with the
//! same `--group` to share the load; with different groups, each sees every event.
//!
//! Run: `cargo run -p examples --bin worker -- --group billing [--prefix demo] [--concurrency 16]`
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`). Stop it with Ctrl-C or SIGTERM: it finishes
//! the events it is handling, acknowledges them and leaves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bus_core::{subscriber_fn, SubscriberOptions};
use examples::{arg, OrderPlaced};

#[tokio::main]
async fn main() {
    examples::init_tracing();
    let Some(group) = arg("--group") else {
        eprintln!("usage: worker --group NAME [--prefix demo] [--concurrency 16]");
        std::process::exit(2);
    };
    let prefix = arg("--prefix").unwrap_or_else(|| "demo".into());
    let concurrency: usize = arg("--concurrency")
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let (bus, _redis) = examples::connect(&prefix, false).await;
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let g = group.clone();
    let sub = subscriber_fn(
        SubscriberOptions::new(group.clone()).concurrency(concurrency),
        move |order: OrderPlaced, ctx| {
            let h = h.clone();
            let g = g.clone();
            async move {
                let n = h.fetch_add(1, Ordering::Relaxed) + 1;
                println!(
                    "[{g} {}] order {} for {} ({} cents), attempt {} — {n} handled",
                    ctx.consumer(),
                    order.order_id,
                    order.customer,
                    order.cents,
                    ctx.attempt()
                );
                Ok::<_, bus_core::HandlerError>(())
            }
        },
    );
    let worker = bus.worker().subscribe(sub);
    println!("worker for group {group} on prefix {prefix}; Ctrl-C to stop");
    if let Err(e) = worker.run(bus_core::shutdown_signal()).await {
        eprintln!("worker failed: {e}");
        std::process::exit(1);
    }
    println!(
        "stopped after handling {} events",
        handled.load(Ordering::Relaxed)
    );
}
