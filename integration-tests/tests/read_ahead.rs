//! The adaptive read-ahead against a real Redis: fast handlers are read in large batches (few
//! `XREADGROUP` calls), slow handlers keep strict back-pressure, and a second worker joining a
//! backlog of slow events gets its share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::testing::RedisAccess;
use bus_core::{subscriber_fn, Bus, Event, HandlerError, SubscriberOptions};
use fred::prelude::*;
use integration_tests::support::{start_worker, OwnRedis};
use integration_tests::{eventually, Recorder, TestEnv};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "work")]
struct Job {
    n: u64,
}

async fn backlog(bus: &Bus, n: u64) {
    let jobs: Vec<Job> = (0..n).map(|n| Job { n }).collect();
    for chunk in jobs.chunks(500) {
        bus.publish_batch(chunk).await.expect("publish");
    }
}

/// `XREADGROUP` calls the server has run so far (`INFO commandstats`).
async fn reads_so_far(bus: &Bus) -> u64 {
    let info: String = bus
        .redis()
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xreadgroup:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Drains a backlog of `n` no-op events with one worker of `concurrency` slots and `opts`;
/// returns how many reads it took.
async fn reads_to_drain(
    bus: &Bus,
    group: &str,
    n: u64,
    opts: impl FnOnce(SubscriberOptions) -> SubscriberOptions,
) -> u64 {
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let sub = subscriber_fn(opts(SubscriberOptions::new(group)), move |_: Job, _| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            Ok::<(), HandlerError>(())
        }
    });
    let before = reads_so_far(bus).await;
    let w = start_worker(bus, sub).await;
    eventually(T, "the backlog drained", || async {
        handled.load(Ordering::SeqCst) as u64 >= n
    })
    .await;
    let reads = reads_so_far(bus).await - before;
    w.shutdown().await.expect("shutdown");
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_handlers_are_read_ahead_in_batches_far_larger_than_the_free_slots() {
    // A server of its own: `INFO commandstats` counts only this test's reads.
    let Some(redis) = OwnRedis::start_or_skip("readahead") else {
        return;
    };
    let bus = redis.bus(None).await;
    const N: u64 = 6_000;
    const C: usize = 8;
    backlog(&bus, N).await;
    // Strict back-pressure reads at most the free slots: at least N / C reads.
    let strict = reads_to_drain(&bus, "strict", N, |o| o.concurrency(C).prefetch(0)).await;
    assert!(strict >= N / C as u64, "strict: {strict} reads");
    // The default reads ahead once it has measured the handlers: far fewer, larger reads.
    let adaptive = reads_to_drain(&bus, "adaptive", N, |o| o.concurrency(C)).await;
    eprintln!("reads for {N} events: strict {strict}, default {adaptive}");
    assert!(
        adaptive < N / (2 * C as u64),
        "default options took {adaptive} reads for {N} events (strict: {strict})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_keep_strict_back_pressure_and_a_second_worker_gets_its_share() {
    const N: u64 = 400;
    const C: usize = 4;
    let env = TestEnv::new("slowahead").await;
    backlog(&env.bus, N).await;
    let key = env.bus.stream_key("work").expect("key");
    let most_pending = Arc::new(AtomicUsize::new(0));
    let rec = Recorder::new();
    let make = |bus: Bus| {
        let (rec, most, key) = (rec.clone(), most_pending.clone(), key.clone());
        subscriber_fn(
            SubscriberOptions::new("g").concurrency(C),
            move |_: Job, ctx| {
                let (rec, most, key, bus) = (rec.clone(), most.clone(), key.clone(), bus.clone());
                async move {
                    // Entries this consumer owns: running, read and waiting, being acked.
                    let rows: Vec<(String, String, u64, u64)> = bus
                        .redis()
                        .xpending(key.as_str(), "g", ("-", "+", 1000))
                        .await
                        .map_err(HandlerError::retry)?;
                    let mine = rows.iter().filter(|r| r.1 == ctx.consumer()).count();
                    most.fetch_max(mine, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    rec.record(ctx.consumer().to_owned());
                    Ok::<(), HandlerError>(())
                }
            },
        )
    };
    let first = start_worker(&env.bus, make(env.bus.clone())).await;
    rec.wait_for(T, "the first worker under way", |s| {
        s.values().sum::<u64>() >= 40
    })
    .await;
    let other = env.another_bus().await;
    let second = start_worker(&other, make(other.clone())).await;
    rec.wait_for(T, "the whole backlog", |s| s.values().sum::<u64>() >= N)
        .await;
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
    let done: HashMap<String, u64> = rec.snapshot();
    // Running (≤ C) + read and not started (≤ C with strict back-pressure) + a few being acked.
    let most = most_pending.load(Ordering::SeqCst);
    eprintln!("most entries one consumer held: {most}; handled per worker: {done:?}");
    assert!(
        most <= 3 * C,
        "a consumer held {most} entries (concurrency {C})"
    );
    // The second worker arrived with about 360 events left and gets about half of them.
    let mut shares: Vec<u64> = done.values().copied().collect();
    shares.sort();
    assert_eq!(shares.len(), 2, "{done:?}");
    assert!(shares[0] >= 100, "shares: {done:?}");
}
