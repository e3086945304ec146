//! Producer: publishes `OrderPlaced` events, for running next to one or more `worker` processes.
//!
//! Run: `cargo run -p examples --bin producer -- --count 1000 [--rate 200] [--prefix demo]`
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`). `--rate` is events per second (default: as
//! fast as possible, in batches of 100).

use std::time::{Duration, Instant};

use examples::{arg, OrderPlaced};

#[tokio::main]
async fn main() {
    examples::init_tracing();
    let count: u64 = arg("--count").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rate: Option<u64> = arg("--rate")
        .and_then(|v| v.parse().ok())
        .filter(|r| *r > 0);
    let prefix = arg("--prefix").unwrap_or_else(|| "demo".into());
    let (bus, _redis) = examples::connect(&prefix, false).await;
    let started = Instant::now();
    let order = |i: u64| OrderPlaced {
        order_id: i,
        customer: format!("customer-{}", i % 37),
        cents: 1_000 + i,
    };
    match rate {
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            for i in 0..count {
                tick.tick().await;
                if let Err(e) = bus.publish(&order(i)).await {
                    eprintln!("publish {i} failed: {e}");
                }
            }
        }
        None => {
            let all: Vec<OrderPlaced> = (0..count).map(order).collect();
            for batch in all.chunks(100) {
                if let Err(e) = bus.publish_batch(batch).await {
                    eprintln!("publish failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "published {count} events to prefix {prefix} in {:.0?}",
        started.elapsed()
    );
}
