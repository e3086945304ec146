//! At-least-once under failure, in one process: retries with backoff, attempt limits, panics,
//! leases, replay and purge of dead letters, consumer reaping, vanished groups, deleted entries.
//! Faults that need real processes (SIGKILL, Redis restarts and stalls) are in `processes.rs`.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Job;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{subscriber_fn, Bus, HandlerError, SubscriberOptions, WorkerHandle};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::{eventually, Recorder, TestEnv};

async fn pending(bus: &Bus, group: &str) -> u64 {
    integration_tests::pending_count(bus, "jobs", group)
        .await
        .expect("XPENDING")
}

const T: Duration = Duration::from_secs(30);

/// (attempt, when) for every handler start.
type Starts = Arc<Mutex<Vec<(u32, Instant)>>>;

fn starts() -> Starts {
    Arc::new(Mutex::new(Vec::new()))
}

fn attempts_of(s: &Starts) -> Vec<u32> {
    s.lock().expect("lock").iter().map(|(a, _)| *a).collect()
}

/// A pool of two workers of group `g` (visibility timeout 600 ms) whose handler records when each
/// attempt starts, then does what `attempt` does with the attempt number.
async fn timed_pool<F, Fut>(env: &TestEnv, st: &Starts, attempt: F) -> Vec<WorkerHandle>
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    env.pool(2, || {
        let (st, attempt) = (st.clone(), attempt.clone());
        let opts = SubscriberOptions::new("g").visibility_timeout(Duration::from_millis(600));
        subscriber_fn(opts, move |_j: Job, ctx| {
            st.lock()
                .expect("lock")
                .push((ctx.attempt(), Instant::now()));
            attempt(ctx.attempt())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_with_growing_delays_then_dead_lettered_with_the_last_error() {
    let env = TestEnv::new("retries").await;
    let st = starts();
    let s2 = st.clone();
    let opts = SubscriberOptions::new("g")
        .max_attempts(4)
        .visibility_timeout(Duration::from_secs(5))
        .backoff_min(Duration::from_millis(100))
        .backoff_max(Duration::from_secs(2));
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(opts, move |_j: Job, ctx| {
            let s2 = s2.clone();
            async move {
                s2.lock()
                    .expect("lock")
                    .push((ctx.attempt(), Instant::now()));
                Err::<(), _>(format!("boom {}", ctx.attempt()))
            }
        }))
        .start()
        .await
        .expect("start");
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    let dlq = env.bus.dead_letters("jobs", "g").expect("dlq");
    eventually(T, "the dead letter", || async {
        dlq.count().await.expect("count") == 1
    })
    .await;
    w.shutdown().await.expect("shutdown");

    assert_eq!(attempts_of(&st), vec![1, 2, 3, 4]);
    let times: Vec<Instant> = st.lock().expect("lock").iter().map(|(_, t)| *t).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Equal jitter: the delay after attempt n is in [base/2, base], base = 100ms × 2^(n-1),
    // and never below the minimum.
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[2] > gaps[0], "delays must grow: {gaps:?}");
    assert!(gaps.iter().all(|g| *g < Duration::from_secs(3)), "{gaps:?}");

    let d = &dlq.list(10).await.expect("list")[0];
    assert_eq!(d.reason, "max_attempts");
    assert_eq!(d.attempts, 4);
    assert_eq!(d.error, "boom 4");
    assert_eq!(pending(&env.bus, "g").await, 0);
    let retry_key = integration_tests::support::attempt_records_key(&env.prefix, "jobs", "g");
    let left: u64 = env
        .bus
        .redis()
        .hlen(retry_key.as_str())
        .await
        .expect("HLEN");
    assert_eq!(left, 0, "the retry record must go with the dead letter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_longer_than_the_visibility_timeout_is_honoured_by_the_whole_pool() {
    let env = TestEnv::new("retryafter").await;
    let st = starts();
    let workers = timed_pool(&env, &st, |attempt| async move {
        if attempt == 1 {
            Err(HandlerError::retry_after(
                Duration::from_millis(2500),
                "later",
            ))
        } else {
            Ok(())
        }
    })
    .await;
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    eventually(T, "the second attempt", || async {
        attempts_of(&st).len() >= 2
    })
    .await;
    eventually(T, "the ack", || async { pending(&env.bus, "g").await == 0 }).await;
    // Four visibility timeouts pass during the wait; the lease keeps other scanners away.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for w in workers {
        w.shutdown().await.expect("shutdown");
    }
    let s = st.lock().expect("lock").clone();
    assert_eq!(
        s.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2],
        "{s:?}"
    );
    let gap = s[1].1 - s[0].1;
    assert!(
        gap >= Duration::from_millis(2450),
        "retried after {gap:?}, asked for 2.5s"
    );
    assert!(gap < Duration::from_millis(4500), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_caught_and_count_as_failed_attempts() {
    let env = TestEnv::new("panic").await;
    let st = starts();
    let s2 = st.clone();
    let opts = SubscriberOptions::new("g").backoff_min(Duration::from_millis(50));
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(opts, move |j: Job, ctx| {
            let s2 = s2.clone();
            async move {
                s2.lock()
                    .expect("lock")
                    .push((ctx.attempt(), Instant::now()));
                if ctx.attempt() == 1 {
                    panic!("handler bug for job {}", j.n);
                }
                Ok::<_, HandlerError>(())
            }
        }))
        .start()
        .await
        .expect("start");
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    eventually(T, "the retry to succeed", || async {
        attempts_of(&st) == vec![1, 2] && pending(&env.bus, "g").await == 0
    })
    .await;
    // The worker survived the panic and keeps handling.
    env.bus.publish(&Job { n: 2 }).await.expect("publish");
    eventually(T, "the next job", || async { attempts_of(&st).len() == 3 }).await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(
        env.bus
            .dead_letters("jobs", "g")
            .expect("dlq")
            .count()
            .await
            .expect("n"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_with_a_live_lease_runs_once() {
    let env = TestEnv::new("lease").await;
    let st = starts();
    let workers = timed_pool(&env, &st, |_| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(())
    })
    .await;
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    eventually(T, "the ack", || async {
        !attempts_of(&st).is_empty() && pending(&env.bus, "g").await == 0
    })
    .await;
    for w in workers {
        w.shutdown().await.expect("shutdown");
    }
    assert_eq!(
        attempts_of(&st),
        vec![1],
        "a live handler 4x slower than the timeout ran twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_dead_letters_back_to_the_failed_group_only() {
    let env = TestEnv::new("replay").await;
    let picky = Recorder::new();
    let easy = Recorder::new();
    let reject = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (p2, e2, r2) = (picky.clone(), easy.clone(), reject.clone());
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("picky"),
            move |j: Job, ctx| {
                let (p2, r2) = (p2.clone(), r2.clone());
                async move {
                    p2.record(format!("{}@{}", j.n, ctx.attempt()));
                    if r2.load(std::sync::atomic::Ordering::SeqCst) {
                        Err(HandlerError::reject("not now"))
                    } else {
                        Ok(())
                    }
                }
            },
        ))
        .subscribe(subscriber_fn(
            SubscriberOptions::new("easy"),
            move |j: Job, _| {
                let e2 = e2.clone();
                async move {
                    e2.record(j.n.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    for n in 0..3 {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    let dlq = env.bus.dead_letters("jobs", "picky").expect("dlq");
    eventually(T, "3 dead letters", || async {
        dlq.count().await.expect("n") == 3
    })
    .await;
    easy.wait_for(T, "easy handles all", |s| s.len() == 3).await;

    reject.store(false, std::sync::atomic::Ordering::SeqCst);
    let first = dlq.list(10).await.expect("list");
    assert_eq!(
        dlq.replay(&[first[0].id.clone()])
            .await
            .expect("replay one"),
        1
    );
    assert_eq!(dlq.replay_all().await.expect("replay rest"), 2);
    assert_eq!(dlq.count().await.expect("n"), 0);
    picky
        .wait_for(T, "the replays", |s| s.values().sum::<u64>() == 6)
        .await;
    eventually(T, "all acked", || async {
        pending(&env.bus, "picky").await == 0 && pending(&env.bus, "easy").await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");
    let p = picky.snapshot();
    for n in 0..3 {
        // Replayed as a fresh event: attempt 1 again.
        assert_eq!(p.get(&format!("{n}@1")), Some(&2), "{p:?}");
    }
    assert_eq!(
        easy.total(),
        3,
        "the other group must not run replays: {:?}",
        easy.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_dead_letters() {
    let env = TestEnv::new("purge").await;
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g"),
            |_j: Job, _| async { Err::<(), _>(HandlerError::reject("no")) },
        ))
        .start()
        .await
        .expect("start");
    for n in 0..4 {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    let dlq = env.bus.dead_letters("jobs", "g").expect("dlq");
    eventually(T, "4 dead letters", || async {
        dlq.count().await.expect("n") == 4
    })
    .await;
    w.shutdown().await.expect("shutdown");
    let one = dlq.list(1).await.expect("list")[0].id.clone();
    assert_eq!(dlq.purge(&[one]).await.expect("purge"), 1);
    assert_eq!(dlq.count().await.expect("n"), 3);
    assert_eq!(dlq.purge_all().await.expect("purge all"), 3);
    assert_eq!(dlq.count().await.expect("n"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_with_the_same_name_takes_over_its_own_pending_entries() {
    let env = TestEnv::new("ownpel").await;
    let st = starts();
    let key = env.bus.stream_key("jobs").expect("key");
    // A previous life of consumer "fixed" received the entry and died without acking.
    let r = env.bus.redis();
    let _: Value = r
        .xgroup_create(key.as_str(), "g", "0", true)
        .await
        .expect("group");
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    let _: Value = r
        .xreadgroup("g", "fixed", Some(10), None, false, key.as_str(), ">")
        .await
        .expect("read");
    let s2 = st.clone();
    let w = env
        .bus
        .worker()
        .consumer_name("fixed")
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g").visibility_timeout(Duration::from_secs(60)),
            move |_j: Job, ctx| {
                let s2 = s2.clone();
                async move {
                    s2.lock()
                        .expect("lock")
                        .push((ctx.attempt(), Instant::now()));
                    Ok::<_, HandlerError>(())
                }
            },
        ))
        .start()
        .await
        .expect("start");
    // Handled at once (not after the 60 s timeout). The earlier delivery ended without an outcome
    // and nothing shows it ran alone, so it is not charged: this run (alone) is attempt 1.
    eventually(Duration::from_secs(10), "the own entry", || async {
        attempts_of(&st) == vec![1] && pending(&env.bus, "g").await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumers_are_reaped_only_once_they_own_nothing() {
    let env = TestEnv::new("reap").await;
    let key = env.bus.stream_key("jobs").expect("key");
    let r = env.bus.redis();
    let _: Value = r
        .xgroup_create(key.as_str(), "g", "0", true)
        .await
        .expect("group");
    let _: Value = r
        .xgroup_createconsumer(key.as_str(), "g", "ghost-empty")
        .await
        .expect("consumer");
    env.bus.publish(&Job { n: 7 }).await.expect("publish");
    let _: Value = r
        .xreadgroup("g", "ghost-owner", Some(10), None, false, key.as_str(), ">")
        .await
        .expect("read");
    let rec = Recorder::new();
    let rc = rec.clone();
    let consumers = || async {
        let v: Vec<std::collections::HashMap<String, Value>> = env
            .bus
            .redis()
            .xinfo_consumers(key.as_str(), "g")
            .await
            .expect("XINFO");
        v.iter()
            .filter_map(|c| c.get("name").and_then(|n| n.as_string()))
            .collect::<Vec<_>>()
    };
    // Let both ghosts be idle for a while first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w = env
        .bus
        .worker()
        .reap_consumers_after(Some(Duration::from_millis(200)))
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g").visibility_timeout(Duration::from_millis(200)),
            move |j: Job, _| {
                let rc = rc.clone();
                async move {
                    rc.record(j.n.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let me = w.consumer_name().to_owned();
    // The owner's entry is reclaimed and handled; then both ghosts go, the live worker stays.
    rec.wait_for(T, "the ghost's entry", |s| s.contains_key("7"))
        .await;
    eventually(T, "ghosts reaped", || async {
        let c = consumers().await;
        !c.iter().any(|n| n.starts_with("ghost"))
    })
    .await;
    assert!(consumers().await.contains(&me));
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_stream_and_group_are_recreated_and_consumption_goes_on() {
    let env = TestEnv::new("nogroup").await;
    let rec = Recorder::new();
    let rc = rec.clone();
    let opts = SubscriberOptions::new("g").block_timeout(Duration::from_millis(200));
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(opts, move |j: Job, _| {
            let rc = rc.clone();
            async move {
                rc.record(j.n.to_string());
            }
        }))
        .start()
        .await
        .expect("start");
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    rec.wait_for(T, "the first job", |s| s.contains_key("1"))
        .await;
    // As after a Redis restart without persistence: the stream and its groups are gone, and the
    // next publish re-creates the stream without groups.
    let key = env.bus.stream_key("jobs").expect("key");
    let _: i64 = env.bus.redis().del(key.as_str()).await.expect("DEL");
    env.bus.publish(&Job { n: 2 }).await.expect("publish");
    rec.wait_for(T, "the job after the reset", |s| s.contains_key("2"))
        .await;
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_while_pending_are_acknowledged_away() {
    let env = TestEnv::new("deleted").await;
    let key = env.bus.stream_key("jobs").expect("key");
    let r = env.bus.redis();
    let _: Value = r
        .xgroup_create(key.as_str(), "g", "0", true)
        .await
        .expect("group");
    let p = env.bus.publish(&Job { n: 1 }).await.expect("publish");
    let _: Value = r
        .xreadgroup("g", "crashed", Some(10), None, false, key.as_str(), ">")
        .await
        .expect("read");
    let _: i64 = r
        .xdel(key.as_str(), p.entry_id.as_str())
        .await
        .expect("XDEL");
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g").visibility_timeout(Duration::from_millis(200)),
            |_j: Job, _| async {},
        ))
        .start()
        .await
        .expect("start");
    eventually(T, "the dangling pending entry to go", || async {
        pending(&env.bus, "g").await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_behind_a_hung_handler_for_read_ahead_entries() {
    let env = TestEnv::new("hungread").await;
    let st = starts();
    let s2 = st.clone();
    for n in 0..3 {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    let w = env
        .bus
        .worker()
        .shutdown_grace(Duration::from_millis(200))
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g").concurrency(1).prefetch(5),
            move |_j: Job, ctx| {
                let s2 = s2.clone();
                async move {
                    s2.lock()
                        .expect("lock")
                        .push((ctx.attempt(), Instant::now()));
                    std::future::pending::<()>().await;
                }
            },
        ))
        .start()
        .await
        .expect("start");
    eventually(T, "the first handler to hang", || async {
        !attempts_of(&st).is_empty()
    })
    .await;
    // Read ahead: all three were delivered to this consumer, one runs (forever).
    eventually(T, "three delivered", || async {
        pending(&env.bus, "g").await == 3
    })
    .await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), w.shutdown())
        .await
        .expect("shutdown must not hang")
        .expect("shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing lost: all three stay pending, released for immediate reclaim.
    let key = env.bus.stream_key("jobs").expect("key");
    let rows: Vec<(String, String, u64, u64)> = env
        .bus
        .redis()
        .xpending(key.as_str(), "g", ("-", "+", 10))
        .await
        .expect("XPENDING");
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r.2 > 1_000_000_000),
        "not all released: {rows:?}"
    );
}
