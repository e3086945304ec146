//! Regression tests for the worker core split (per-entry state machine):
//!
//! - one consumer group with several event types in one worker, and what happens to entries of a
//!   type no handler of the group knows (skip and count, or dead-letter and replay after a rolling
//!   deploy that renamed a type);
//! - entries deleted from the stream while pending (waiting for a retry, or during the last
//!   attempt) are counted as deleted, never reported as a lost lease nor dead-lettered empty;
//! - a zombie attempt (its lease lost while it ran) cannot release the state of the newer attempt
//!   of the same entry in the same process;
//! - a dead-letter script re-sent after its reply was lost still reports the move, so the `dead`
//!   status is written and waiters see it.
//!
//! Metrics go through one process-wide debugging recorder; every test that reads a metric uses a
//! group name of its own, as counters are told apart by their (stream, group) labels only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bus_core::{subscriber_fn, Bus, Error, Event, HandlerError, State, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::proxy::FaultProxy;
use integration_tests::{eventually, unique_prefix, Recorder, RedisServer, TestEnv};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Event types

/// Two event types of one stream, handled by one group.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders", name = "OrderPlaced")]
struct OrderPlaced {
    order_id: u64,
    cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders", name = "OrderCancelled")]
struct OrderCancelled {
    order_id: u64,
    why: String,
}

/// `OrderPlaced` renamed in a newer version of the producer (same stream).
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders", name = "OrderCreated")]
struct OrderCreated {
    order_id: u64,
    cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "x")]
struct X {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "req")]
struct Req {
    n: u64,
}

/// Options for a group that must handle every event of its stream. (On the old code, which has
/// no `UnknownTypes`, this line is replaced by `o` to show the old behaviour.)
fn dead_letter_unknown(o: SubscriberOptions) -> SubscriberOptions {
    o.unknown_types(bus_core::UnknownTypes::DeadLetter)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Installs the process-wide debugging recorder (once, before any worker registers its counters).
fn metrics_init() -> &'static Snapshotter {
    static SNAP: OnceLock<Snapshotter> = OnceLock::new();
    SNAP.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("install the metrics recorder");
        snapshotter
    })
}

type Totals = Vec<(String, Vec<(String, String)>, u64)>;

/// The running total of a counter over every label set that has all of `labels`. Snapshots
/// return deltas, so every read folds them into process-wide totals first.
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    static TOTALS: Mutex<Totals> = Mutex::new(Vec::new());
    let snap = metrics_init();
    let mut totals = TOTALS.lock().expect("lock");
    for (k, _, _, v) in snap.snapshot().into_vec() {
        if let DebugValue::Counter(c) = v {
            let ls: Vec<(String, String)> = k
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let n = k.key().name().to_owned();
            match totals.iter_mut().find(|(tn, tl, _)| *tn == n && *tl == ls) {
                Some(t) => t.2 += c,
                None => totals.push((n, ls, c)),
            }
        }
    }
    totals
        .iter()
        .filter(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(lk, lv)| ls.iter().any(|(k, v)| k == lk && v == lv))
        })
        .map(|(_, _, c)| *c)
        .sum()
}

async fn pending(bus: &Bus, stream: &str, group: &str) -> u64 {
    integration_tests::pending_count(bus, stream, group)
        .await
        .expect("XPENDING")
}

async fn dlq_count(bus: &Bus, stream: &str, group: &str) -> u64 {
    bus.dead_letters(stream, group)
        .expect("dlq")
        .count()
        .await
        .expect("XLEN")
}

/// The group's last delivered entry id (XINFO GROUPS).
async fn last_delivered(bus: &Bus, stream: &str, group: &str) -> Option<String> {
    let key = bus.stream_key(stream).expect("key");
    let groups: Vec<std::collections::HashMap<String, Value>> =
        bus.redis().xinfo_groups(key.as_str()).await.ok()?;
    groups
        .iter()
        .find(|g| g.get("name").and_then(Value::as_string).as_deref() == Some(group))
        .and_then(|g| g.get("last-delivered-id").and_then(Value::as_string))
}

/// Waits until `group` has been delivered everything up to `entry_id` and has nothing pending.
async fn settled(bus: &Bus, stream: &str, group: &str, entry_id: &str) {
    eventually(T, "every entry delivered and settled", || async {
        last_delivered(bus, stream, group).await.as_deref() == Some(entry_id)
            && pending(bus, stream, group).await == 0
    })
    .await;
}

/// Dead letters (raw) carrying a `dl.missing` field: a move made without the entry's data.
async fn missing_data_dead_letters(bus: &Bus, stream: &str, group: &str) -> usize {
    let key = bus.dead_letter_key(stream, group).expect("key");
    let rows: Value = bus
        .redis()
        .xrange(key.as_str(), "-", "+", None)
        .await
        .expect("XRANGE");
    format!("{rows:?}").matches("dl.missing").count()
}

/// Pending row of one entry: (owner, idle ms, deliveries).
async fn pending_row(bus: &Bus, stream: &str, group: &str, id: &str) -> Option<(String, u64, u64)> {
    let key = bus.stream_key(stream).expect("key");
    let rows: Vec<(String, String, u64, u64)> = bus
        .redis()
        .xpending(key.as_str(), group, (id, id, 1))
        .await
        .expect("XPENDING");
    rows.into_iter().next().map(|r| (r.1, r.2, r.3))
}

// ---------------------------------------------------------------------------------------------
// 4. One group, several event types; unknown types never vanish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_in_one_worker_dispatches_each_event_type_to_its_own_handler() {
    metrics_init();
    let env = TestEnv::new("multitype").await;
    let placed = Recorder::new();
    let cancelled = Recorder::new();
    let (p2, c2) = (placed.clone(), cancelled.clone());
    let opts = SubscriberOptions::new("billing").block_timeout(Duration::from_millis(200));
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(opts.clone(), move |e: OrderPlaced, ctx| {
            let p2 = p2.clone();
            async move {
                p2.record(format!("{}:{}:{}", ctx.event_type(), e.order_id, e.cents));
                Ok::<_, HandlerError>(())
            }
        }))
        .subscribe(subscriber_fn(opts, move |e: OrderCancelled, ctx| {
            let c2 = c2.clone();
            async move {
                c2.record(format!("{}:{}:{}", ctx.event_type(), e.order_id, e.why));
                Ok::<_, HandlerError>(())
            }
        }))
        .start()
        .await
        .expect("two event types of one stream in one group and one worker must start");
    let mut last = String::new();
    for n in 0..4 {
        env.bus
            .publish(&OrderPlaced {
                order_id: n,
                cents: 100 * n,
            })
            .await
            .expect("publish");
        last = env
            .bus
            .publish(&OrderCancelled {
                order_id: n,
                why: format!("changed mind {n}"),
            })
            .await
            .expect("publish")
            .entry_id;
    }
    placed.wait_for(T, "4 placed", |s| s.len() == 4).await;
    cancelled.wait_for(T, "4 cancelled", |s| s.len() == 4).await;
    settled(&env.bus, "orders", "billing", &last).await;
    w.shutdown().await.expect("shutdown");

    for n in 0..4 {
        let k = format!("OrderPlaced:{n}:{}", 100 * n);
        assert_eq!(
            placed.snapshot().get(&k),
            Some(&1),
            "{:?}",
            placed.snapshot()
        );
        let k = format!("OrderCancelled:{n}:changed mind {n}");
        assert_eq!(
            cancelled.snapshot().get(&k),
            Some(&1),
            "{:?}",
            cancelled.snapshot()
        );
    }
    assert_eq!(placed.total(), 4, "{:?}", placed.snapshot());
    assert_eq!(cancelled.total(), 4, "{:?}", cancelled.snapshot());
    assert_eq!(dlq_count(&env.bus, "orders", "billing").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_sharing_a_group_must_have_equal_options_and_distinct_types() {
    metrics_init();
    let env = TestEnv::new("multiconf").await;
    let opts = SubscriberOptions::new("billing").block_timeout(Duration::from_millis(200));
    let placed = || subscriber_fn(opts.clone(), |_e: OrderPlaced, _| async {});
    let cancelled = |o: SubscriberOptions| subscriber_fn(o, |_e: OrderCancelled, _| async {});

    // Different options in one group: a configuration error, before anything is created.
    let r = env
        .bus
        .worker()
        .subscribe(placed())
        .subscribe(cancelled(opts.clone().concurrency(2)))
        .start()
        .await;
    match r {
        Err(Error::Config(msg)) => assert!(msg.contains("billing"), "{msg}"),
        other => panic!("conflicting options must be Error::Config, got {other:?}"),
    }
    let r = env
        .bus
        .worker()
        .subscribe(placed())
        .subscribe(cancelled(opts.clone().max_attempts(9)))
        .start()
        .await;
    assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    // Two handlers of one event type in one group: an error too.
    let r = env
        .bus
        .worker()
        .subscribe(placed())
        .subscribe(placed())
        .start()
        .await;
    assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    assert!(
        env.keys().await.is_empty(),
        "a refused configuration must create nothing: {:?}",
        env.keys().await
    );

    // Equal options: fine.
    let w = env
        .bus
        .worker()
        .subscribe(placed())
        .subscribe(cancelled(opts.clone()))
        .start()
        .await
        .expect("handlers of two types with equal options share the group");
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_are_acknowledged_and_counted_under_the_default_policy() {
    metrics_init();
    let env = TestEnv::new("skipunknown").await;
    let group = "audit-skip";
    let placed = Recorder::new();
    let p2 = placed.clone();
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group).block_timeout(Duration::from_millis(200)),
            move |e: OrderPlaced, _| {
                let p2 = p2.clone();
                async move {
                    p2.record(e.order_id.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    env.bus
        .publish(&OrderPlaced {
            order_id: 1,
            cents: 5,
        })
        .await
        .expect("publish");
    for n in 0..2 {
        env.bus
            .publish(&OrderCancelled {
                order_id: n,
                why: "x".into(),
            })
            .await
            .expect("publish");
    }
    let last = env
        .bus
        .publish(&OrderPlaced {
            order_id: 2,
            cents: 5,
        })
        .await
        .expect("publish")
        .entry_id;
    placed
        .wait_for(T, "both known events", |s| s.len() == 2)
        .await;
    settled(&env.bus, "orders", group, &last).await;
    let labels = [("group", group), ("reason", "unknown_type")];
    // Counted before the ack, so already visible once nothing is pending.
    eventually(
        Duration::from_secs(2),
        "streambus_skipped_total{reason=unknown_type} to reach 2",
        || async { counter("streambus_skipped_total", &labels) >= 2 },
    )
    .await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(counter("streambus_skipped_total", &labels), 2);
    assert_eq!(dlq_count(&env.bus, "orders", group).await, 0);
    assert_eq!(
        counter("streambus_dead_lettered_total", &[("group", group)]),
        0
    );
    assert_eq!(placed.total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_are_dead_lettered_under_the_dead_letter_policy() {
    metrics_init();
    let env = TestEnv::new("dlunknown").await;
    let group = "audit-strict";
    let placed = Recorder::new();
    let p2 = placed.clone();
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            dead_letter_unknown(
                SubscriberOptions::new(group).block_timeout(Duration::from_millis(200)),
            ),
            move |e: OrderPlaced, _| {
                let p2 = p2.clone();
                async move {
                    p2.record(e.order_id.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let unknown = env
        .bus
        .publish(&OrderCancelled {
            order_id: 7,
            why: "x".into(),
        })
        .await
        .expect("publish");
    let last = env
        .bus
        .publish(&OrderPlaced {
            order_id: 8,
            cents: 1,
        })
        .await
        .expect("publish")
        .entry_id;
    placed
        .wait_for(T, "the known event", |s| s.len() == 1)
        .await;
    settled(&env.bus, "orders", group, &last).await;
    let dlq = env.bus.dead_letters("orders", group).expect("dlq");
    let list = dlq.list(10).await.expect("list");
    assert_eq!(
        list.len(),
        1,
        "the unknown-type entry must wait in the dead letters: {list:?}"
    );
    let d = &list[0];
    assert_eq!(d.reason, "unknown_type");
    assert_eq!(d.entry_id, unknown.entry_id);
    assert_eq!(d.event_id.as_deref(), Some(unknown.event_id.as_str()));
    assert_eq!(d.event_type.as_deref(), Some("OrderCancelled"));
    assert!(d.error.contains("OrderCancelled"), "{}", d.error);
    assert!(!d.fields.is_empty(), "the original entry must be kept");
    eventually(Duration::from_secs(2), "the dead-letter count", || async {
        counter(
            "streambus_dead_lettered_total",
            &[("group", group), ("reason", "unknown_type")],
        ) == 1
    })
    .await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(counter("streambus_skipped_total", &[("group", group)]), 0);
    assert_eq!(placed.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_renamed_in_a_rolling_deploy_is_dead_lettered_then_replayed_into_the_new_worker() {
    metrics_init();
    let env = TestEnv::new("rename").await;
    let group = "billing";
    let opts = dead_letter_unknown(
        SubscriberOptions::new(group).block_timeout(Duration::from_millis(200)),
    );

    // The old version knows only OrderPlaced.
    let old_placed = Recorder::new();
    let op = old_placed.clone();
    let old_bus = env.another_bus().await;
    let old = old_bus
        .worker()
        .consumer_name("old-version")
        .subscribe(subscriber_fn(opts.clone(), move |e: OrderPlaced, _| {
            let op = op.clone();
            async move {
                op.record(e.order_id.to_string());
            }
        }))
        .start()
        .await
        .expect("old worker");

    // The new producer already publishes the renamed type.
    let mut renamed = HashSet::new();
    let mut last = String::new();
    for n in 0..3 {
        env.bus
            .publish(&OrderPlaced {
                order_id: n,
                cents: 1,
            })
            .await
            .expect("publish");
        let p = env
            .bus
            .publish(&OrderCreated {
                order_id: 100 + n,
                cents: 2,
            })
            .await
            .expect("publish");
        renamed.insert(p.event_id);
        last = p.entry_id;
    }
    old_placed
        .wait_for(T, "the old type", |s| s.len() == 3)
        .await;
    settled(&env.bus, "orders", group, &last).await;
    let dlq = env.bus.dead_letters("orders", group).expect("dlq");
    let list = dlq.list(10).await.expect("list");
    assert_eq!(
        list.len(),
        3,
        "every event of the renamed type must wait in the dead letters: {list:?}"
    );
    for d in &list {
        assert_eq!(d.reason, "unknown_type");
        assert_eq!(d.event_type.as_deref(), Some("OrderCreated"));
        assert!(renamed.contains(d.event_id.as_deref().unwrap_or_default()));
    }
    old.shutdown().await.expect("old shutdown");

    // The new version knows both types (one group, two handlers); replay the dead letters.
    let new_placed = Recorder::new();
    let created = Recorder::new();
    let (np, cr) = (new_placed.clone(), created.clone());
    let new_bus = env.another_bus().await;
    let new = new_bus
        .worker()
        .consumer_name("new-version")
        .subscribe(subscriber_fn(opts.clone(), move |e: OrderPlaced, _| {
            let np = np.clone();
            async move {
                np.record(e.order_id.to_string());
            }
        }))
        .subscribe(subscriber_fn(opts, move |e: OrderCreated, ctx| {
            let cr = cr.clone();
            async move {
                assert_eq!(e.order_id / 100, 1);
                cr.record(format!("{}@{}", ctx.event_id(), ctx.attempt()));
            }
        }))
        .start()
        .await
        .expect("new worker");
    assert_eq!(dlq.replay_all().await.expect("replay"), 3);
    created
        .wait_for(T, "the renamed events", |s| s.len() == 3)
        .await;
    eventually(T, "nothing pending, nothing dead", || async {
        pending(&env.bus, "orders", group).await == 0 && dlq.count().await.expect("n") == 0
    })
    .await;
    new.shutdown().await.expect("new shutdown");
    let got: HashSet<String> = created
        .snapshot()
        .keys()
        .map(|k| k.trim_end_matches("@1").to_owned())
        .collect();
    assert_eq!(got, renamed, "{:?}", created.snapshot());
    assert!(created.snapshot().values().all(|c| *c == 1));
    assert_eq!(new_placed.total(), 0, "old-type events must not run again");
    assert_eq!(old_placed.total(), 3);
}

// ---------------------------------------------------------------------------------------------
// 7. Entries deleted while pending

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_while_waiting_for_its_retry_is_counted_as_deleted_not_lost_or_dead() {
    metrics_init();
    let env = TestEnv::new("delwait").await;
    let group = "del-wait";
    let attempts = Arc::new(Mutex::new(Vec::<u32>::new()));
    let a2 = attempts.clone();
    let backoff = Duration::from_secs(1);
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group)
                .max_attempts(2)
                .backoff_min(backoff)
                .backoff_max(backoff)
                // Heartbeats every 200 ms: several renewals before the retry is due.
                .visibility_timeout(Duration::from_millis(600))
                .block_timeout(Duration::from_millis(200)),
            move |_e: X, ctx| {
                let a2 = a2.clone();
                async move {
                    a2.lock().expect("lock").push(ctx.attempt());
                    Err::<(), _>(HandlerError::retry(format!("fails {}", ctx.attempt())))
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let p = env.bus.publish(&X { n: 1 }).await.expect("publish");
    let key = env.bus.stream_key("x").expect("key");
    let records = format!("{}:{{x}}:retry:{group}", env.prefix);
    let r = env.bus.redis();
    // The first attempt failed and its retry is recorded: the entry waits in the worker.
    eventually(T, "the retry record", || async {
        r.hexists::<bool, _, _>(records.as_str(), p.entry_id.as_str())
            .await
            .expect("HEXISTS")
    })
    .await;
    let deleted_at = Instant::now();
    let n: i64 = r
        .xdel(key.as_str(), p.entry_id.as_str())
        .await
        .expect("XDEL");
    assert_eq!(n, 1);
    eventually(T, "the deleted entry to leave the pending list", || async {
        pending(&env.bus, "x", group).await == 0
    })
    .await;
    // Observation window: past the time the retry was due, so a take (or a dead letter at the
    // attempt limit) would have happened by now.
    tokio::time::sleep_until((deleted_at + backoff + Duration::from_millis(800)).into()).await;
    let dead = dlq_count(&env.bus, "x", group).await;
    let missing = missing_data_dead_letters(&env.bus, "x", group).await;
    let deleted = counter("streambus_deleted_pending_total", &[("group", group)]);
    let lost = counter("streambus_lease_lost_total", &[("group", group)]);
    w.shutdown().await.expect("shutdown");

    assert_eq!(dead, 0, "a deleted entry must not be dead-lettered");
    assert_eq!(missing, 0, "no dead letter without data");
    assert_eq!(
        deleted, 1,
        "the deletion must be counted as deleted_pending (lease_lost = {lost})"
    );
    assert_eq!(lost, 0, "a deleted entry is not a lost lease");
    assert_eq!(*attempts.lock().expect("lock"), vec![1]);
    assert_eq!(pending(&env.bus, "x", group).await, 0);
    let left: u64 = r.hlen(records.as_str()).await.expect("HLEN");
    assert_eq!(left, 0, "the retry record must go with the entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_during_its_last_attempt_is_not_dead_lettered_without_data() {
    metrics_init();
    let env = TestEnv::new("dellast").await;
    let group = "del-last";
    let attempts = Arc::new(Mutex::new(Vec::<u32>::new()));
    let a2 = attempts.clone();
    let key = env.bus.stream_key("x").expect("key");
    let (client, k2) = (env.bus.redis().clone(), key.clone());
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group)
                .max_attempts(2)
                .backoff_min(Duration::from_millis(50))
                .backoff_max(Duration::from_millis(100))
                // Heartbeats rarely: the handler's own outcome meets the deletion first.
                .visibility_timeout(Duration::from_secs(6))
                .block_timeout(Duration::from_millis(200)),
            move |_e: X, ctx| {
                let (a2, client, k2) = (a2.clone(), client.clone(), k2.clone());
                async move {
                    a2.lock().expect("lock").push(ctx.attempt());
                    if ctx.attempt() >= 2 {
                        // Trimmed or XDELed while the last attempt runs; then the attempt fails.
                        let _: i64 = client
                            .xdel(k2.as_str(), ctx.entry_id())
                            .await
                            .map_err(|e| HandlerError::retry(e.to_string()))?;
                    }
                    Err::<(), _>(HandlerError::retry(format!("fails {}", ctx.attempt())))
                }
            },
        ))
        .start()
        .await
        .expect("start");
    env.bus.publish(&X { n: 1 }).await.expect("publish");
    eventually(T, "the last attempt to end", || async {
        attempts.lock().expect("lock").len() == 2 && pending(&env.bus, "x", group).await == 0
    })
    .await;
    let dead = env
        .bus
        .dead_letters("x", group)
        .expect("dlq")
        .list(10)
        .await
        .expect("list");
    assert!(
        dead.is_empty(),
        "an entry deleted during its last attempt must not be dead-lettered (dl.missing: {}): {dead:?}",
        missing_data_dead_letters(&env.bus, "x", group).await
    );
    eventually(
        Duration::from_secs(2),
        "the deletion to be counted",
        || async { counter("streambus_deleted_pending_total", &[("group", group)]) == 1 },
    )
    .await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(missing_data_dead_letters(&env.bus, "x", group).await, 0);
    assert_eq!(
        counter("streambus_dead_lettered_total", &[("group", group)]),
        0
    );
    assert_eq!(
        counter("streambus_lease_lost_total", &[("group", group)]),
        0
    );
    assert_eq!(*attempts.lock().expect("lock"), vec![1, 2]);
    let records = format!("{}:{{x}}:retry:{group}", env.prefix);
    let left: u64 = env.bus.redis().hlen(records.as_str()).await.expect("HLEN");
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumers_own_entries_deleted_meanwhile_are_not_dead_lettered_at_the_limit() {
    metrics_init();
    let env = TestEnv::new("delown").await;
    let group = "del-own";
    let key = env.bus.stream_key("x").expect("key");
    let records = format!("{}:{{x}}:retry:{group}", env.prefix);
    let r = env.bus.redis();
    let _: Value = r
        .xgroup_create(key.as_str(), group, "0", true)
        .await
        .expect("group");
    // First in the pending list: an entry of a stalled consumer, reclaimable at once. The
    // scanner's first round claims it and stops there (one slot), so it never sweeps the
    // deleted entries below out of the pending list: only the takes meet them.
    let stalled = env
        .bus
        .publish(&X { n: 0 })
        .await
        .expect("publish")
        .entry_id;
    let _: Value = r
        .xreadgroup(group, "stalled", Some(1), None, false, key.as_str(), ">")
        .await
        .expect("read");
    // A previous life of consumer "fixed" received two entries (delivered twice each) and died;
    // meanwhile both were deleted from the stream (trimmed or XDEL). The first had started its
    // second attempt alone (record kind `s`, one attempt charged before): its attempts are used
    // up, so its take moves it to the dead letters. The second (no record) is a suspect that
    // must run alone first.
    let at_limit = env
        .bus
        .publish(&X { n: 1 })
        .await
        .expect("publish")
        .entry_id;
    let suspect = env
        .bus
        .publish(&X { n: 2 })
        .await
        .expect("publish")
        .entry_id;
    let _: Value = r
        .xreadgroup(group, "fixed", Some(10), None, false, key.as_str(), ">")
        .await
        .expect("read");
    let ids = vec![at_limit.as_str(), suspect.as_str()];
    let _: Value = r
        .xclaim(
            key.as_str(),
            group,
            "fixed",
            0,
            ids.clone(),
            None,
            None,
            Some(2),
            false,
            true,
        )
        .await
        .expect("XCLAIM RETRYCOUNT");
    let _: Value = r
        .xclaim(
            key.as_str(),
            group,
            "stalled",
            0,
            stalled.as_str(),
            Some(3_600_000),
            None,
            None,
            false,
            true,
        )
        .await
        .expect("XCLAIM IDLE");
    let _: () = r
        .hset(
            records.as_str(),
            (at_limit.as_str(), "2|s|1|crashed-attempt|0|"),
        )
        .await
        .expect("HSET");
    let n: i64 = r.xdel(key.as_str(), ids.clone()).await.expect("XDEL");
    assert_eq!(n, 2);
    let ran = Recorder::new();
    let rc = ran.clone();
    let w = env
        .bus
        .worker()
        .consumer_name("fixed")
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group)
                .max_attempts(2)
                .concurrency(1)
                .visibility_timeout(Duration::from_secs(30))
                .block_timeout(Duration::from_millis(200)),
            move |e: X, _| {
                let rc = rc.clone();
                async move {
                    rc.record(e.n.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    eventually(
        T,
        "the deleted entries to leave the pending list",
        || async {
            pending_row(&env.bus, "x", group, &at_limit).await.is_none()
                && pending_row(&env.bus, "x", group, &suspect).await.is_none()
        },
    )
    .await;
    let dead = env
        .bus
        .dead_letters("x", group)
        .expect("dlq")
        .list(10)
        .await
        .expect("list");
    assert!(
        dead.is_empty(),
        "deleted entries must not be dead-lettered (dl.missing: {}): {dead:?}",
        missing_data_dead_letters(&env.bus, "x", group).await
    );
    eventually(Duration::from_secs(2), "both deletions counted", || async {
        counter("streambus_deleted_pending_total", &[("group", group)]) == 2
    })
    .await;
    w.shutdown().await.expect("shutdown");
    let snap = ran.snapshot();
    assert!(
        !snap.contains_key("1") && !snap.contains_key("2"),
        "deleted entries cannot run: {snap:?}"
    );
    assert_eq!(
        counter("streambus_dead_lettered_total", &[("group", group)]),
        0
    );
    let left: bool = r
        .hexists(records.as_str(), at_limit.as_str())
        .await
        .expect("HEXISTS");
    assert!(!left, "the record must go with the entry");
}

// ---------------------------------------------------------------------------------------------
// 8. A zombie attempt cannot release the newer attempt's state

/// Starts (attempt numbers) and how many runs of the one event overlapped at most.
#[derive(Default)]
struct Runs {
    starts: Mutex<Vec<u32>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_attempts_failure_does_not_release_the_lease_of_the_newer_attempt() {
    metrics_init();
    let env = TestEnv::new("zombie").await;
    let group = "zombie";
    let vt = Duration::from_millis(600);
    let runs = Arc::new(Runs::default());
    let rec = Recorder::new();
    // Attempt 2 (the future zombie) and attempts 3+ wait for the test.
    let (zombie_tx, zombie_rx) = watch::channel(false);
    let (rest_tx, rest_rx) = watch::channel(false);
    let (r2, rc) = (runs.clone(), rec.clone());
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group)
                .concurrency(4)
                .max_attempts(5)
                .visibility_timeout(vt)
                .backoff_min(Duration::from_millis(50))
                .backoff_max(Duration::from_millis(100))
                .block_timeout(Duration::from_millis(200)),
            move |_e: X, ctx| {
                let (runs, rec) = (r2.clone(), rc.clone());
                let (mut zombie_rx, mut rest_rx) = (zombie_rx.clone(), rest_rx.clone());
                async move {
                    let a = ctx.attempt();
                    runs.starts.lock().expect("lock").push(a);
                    let now = runs.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    runs.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    rec.record(format!("start{a}"));
                    let r = match a {
                        1 => Err(HandlerError::retry("attempt 1 fails")),
                        2 => {
                            let _ = zombie_rx.wait_for(|v| *v).await;
                            Err(HandlerError::retry("the zombie fails"))
                        }
                        _ => {
                            let _ = rest_rx.wait_for(|v| *v).await;
                            Ok(())
                        }
                    };
                    runs.in_flight.fetch_sub(1, Ordering::SeqCst);
                    r
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let me = w.consumer_name().to_owned();
    let id = env
        .bus
        .publish(&X { n: 1 })
        .await
        .expect("publish")
        .entry_id;
    let key = env.bus.stream_key("x").expect("key");
    let r = env.bus.redis();
    rec.wait_for(T, "attempt 2", |s| s.contains_key("start2"))
        .await;

    // Attempt 2 loses its lease while it runs: another consumer owns the entry (JUSTID: no
    // delivery counted; repeated, so it never idles past the visibility timeout meanwhile)
    // until this worker's heartbeat has noticed.
    let lost = |n| counter("streambus_lease_lost_total", &[("group", group)]) >= n;
    eventually(T, "the heartbeat to see the lease lost", || async {
        let _: Value = r
            .xclaim(
                key.as_str(),
                group,
                "intruder",
                0,
                id.as_str(),
                None,
                None,
                None,
                false,
                true,
            )
            .await
            .expect("XCLAIM");
        lost(1)
    })
    .await;
    // The intruder stalls: its entry becomes reclaimable, and this worker's scanner takes it
    // back while attempt 2 (now a zombie) still runs.
    let _: Value = r
        .xclaim(
            key.as_str(),
            group,
            "intruder",
            0,
            id.as_str(),
            Some(3_600_000),
            None,
            None,
            false,
            true,
        )
        .await
        .expect("XCLAIM IDLE");
    eventually(T, "the scanner to reclaim the entry", || async {
        pending_row(&env.bus, "x", group, &id)
            .await
            .is_some_and(|(owner, _, _)| owner == me)
    })
    .await;

    // The zombie ends with a failure; then the newer attempt runs.
    zombie_tx.send_replace(true);
    rec.wait_for(T, "attempt 3", |s| s.contains_key("start3"))
        .await;
    // While attempt 3 runs, its lease must be renewed: watch several renewals (the idle time
    // drops) and check the entry never idles past the visibility timeout (it would be reclaimed
    // and run again).
    let mut renewals = 0;
    let mut prev = 0u64;
    let deadline = Instant::now() + T;
    while renewals < 4 {
        let (owner, idle, _) = pending_row(&env.bus, "x", group, &id)
            .await
            .expect("attempt 3's entry must stay pending while it runs");
        assert_eq!(owner, me);
        assert!(
            idle < vt.as_millis() as u64,
            "the running attempt 3 lost its lease: idle {idle} ms > visibility timeout; starts {:?}",
            runs.starts.lock().expect("lock")
        );
        assert_eq!(
            *runs.starts.lock().expect("lock"),
            vec![1, 2, 3],
            "the entry ran again while attempt 3 was running"
        );
        if idle < prev {
            renewals += 1;
        }
        prev = idle;
        assert!(Instant::now() < deadline, "no lease renewals seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rest_tx.send_replace(true);
    eventually(T, "the ack", || async {
        pending(&env.bus, "x", group).await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");

    let starts = runs.starts.lock().expect("lock").clone();
    assert_eq!(
        starts,
        vec![1, 2, 3],
        "each attempt runs once, the newer one after the zombie"
    );
    assert_eq!(
        runs.max_in_flight.load(Ordering::SeqCst),
        1,
        "two attempts of one event ran at once in one process: {starts:?}"
    );
    assert_eq!(dlq_count(&env.bus, "x", group).await, 0);
    assert_eq!(
        counter("streambus_lease_lost_total", &[("group", group)]),
        1,
        "only the forced loss"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Status after a dead-letter script whose reply was lost

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_re_sent_after_its_reply_was_lost_still_records_the_dead_status() {
    metrics_init();
    integration_tests::init_tracing();
    let server = RedisServer::builder().start().expect("redis-server");
    let upstream: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let proxy = FaultProxy::start(upstream).expect("proxy");
    let prefix = unique_prefix("t-lostdl");
    // The worker talks to Redis through the proxy; the waiter directly.
    let worker_bus = Bus::builder()
        .prefix(prefix.clone())
        .connect(&proxy.url())
        .await
        .expect("worker bus");
    let observer = Bus::builder()
        .prefix(prefix.clone())
        .connect(&server.url())
        .await
        .expect("observer bus");
    let group = "req-status";
    let w = worker_bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group)
                .track_status(true)
                .block_timeout(Duration::from_millis(200)),
            |_r: Req, _| async { Err::<(), _>(HandlerError::reject("nope")) },
        ))
        .start()
        .await
        .expect("start");

    // Warm-up: the dead-letter script is loaded into the server's cache, so the faulty call
    // below is the script run itself (not an EVALSHA answered with NOSCRIPT).
    let p0 = observer.publish(&Req { n: 0 }).await.expect("publish");
    let st0 = observer
        .wait_for::<Req>(&p0.event_id, group, Duration::from_secs(10))
        .await
        .expect("warm-up status");
    assert_eq!(st0.state, State::Dead);

    // Only the dead-letter script carries the reason argument `rejected` (the status write
    // carries the handler's error, "nope").
    let fault = proxy.lose_reply_after(b"$8\r\nrejected\r\n");
    let p1 = observer.publish(&Req { n: 1 }).await.expect("publish");
    let st1 = observer
        .wait_for::<Req>(&p1.event_id, group, Duration::from_secs(10))
        .await;
    assert!(
        fault.fired(),
        "the dead-letter script's reply was never lost"
    );
    let st1 = st1.expect("the waiter must see the dead status, not time out");
    assert_eq!(st1.state, State::Dead);
    assert_eq!(st1.error.as_deref(), Some("nope"));
    assert_eq!(st1.attempts, 1);
    // Moved once, not twice.
    eventually(T, "nothing pending", || async {
        pending(&observer, "req", group).await == 0
    })
    .await;
    let dead = observer
        .dead_letters("req", group)
        .expect("dlq")
        .list(10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[1].event_id.as_deref(), Some(p1.event_id.as_str()));
    assert_eq!(dead[1].reason, "rejected");
    w.shutdown().await.expect("shutdown");
}

/// A re-sent dead-letter script finds its own earlier move however many other dead letters the
/// group wrote meanwhile (a reject storm during a network blip): the `dead` status is written and
/// waiters return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_re_sent_after_many_other_dead_letters_still_records_the_dead_status() {
    metrics_init();
    integration_tests::init_tracing();
    let server = RedisServer::builder().start().expect("redis-server");
    let upstream: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let proxy = FaultProxy::start(upstream).expect("proxy");
    let prefix = unique_prefix("t-lostdl16");
    let worker_bus = Bus::builder()
        .prefix(prefix.clone())
        .connect(&proxy.url())
        .await
        .expect("worker bus");
    let observer = Bus::builder()
        .prefix(prefix.clone())
        .connect(&server.url())
        .await
        .expect("observer bus");
    let group = "req-status16";
    let w = worker_bus
        .worker()
        .consumer_name("w1")
        .subscribe(subscriber_fn(
            SubscriberOptions::new(group)
                .track_status(true)
                .block_timeout(Duration::from_millis(200)),
            |_r: Req, _| async { Err::<(), _>(HandlerError::reject("nope")) },
        ))
        .start()
        .await
        .expect("start");
    let p0 = observer.publish(&Req { n: 0 }).await.expect("publish");
    observer
        .wait_for::<Req>(&p0.event_id, group, Duration::from_secs(10))
        .await
        .expect("warm-up status");

    let fault = proxy.lose_reply_after(b"$8\r\nrejected\r\n");
    // The worker's reconnect is refused until the other dead letters are written.
    proxy.refuse(true);
    let p1 = observer.publish(&Req { n: 1 }).await.expect("publish");
    assert!(fault.wait_fired(Duration::from_secs(10)).await);
    // Meanwhile, other workers of the group dead-letter 20 entries.
    let dlq_key = observer.dead_letter_key("req", group).expect("key");
    for i in 0..20 {
        let _: String = observer
            .redis()
            .xadd(
                dlq_key.as_str(),
                false,
                None,
                "*",
                vec![
                    ("dl.group", group.to_owned()),
                    ("dl.entry_id", format!("1-{i}")),
                    ("dl.consumer", "w2".to_owned()),
                    ("dl.reason", "rejected".to_owned()),
                ],
            )
            .await
            .expect("XADD");
    }
    proxy.refuse(false);
    let st1 = observer
        .wait_for::<Req>(&p1.event_id, group, Duration::from_secs(10))
        .await;
    w.shutdown().await.expect("shutdown");
    let st1 = st1.expect("the waiter must see the dead status, not time out");
    assert_eq!(st1.state, State::Dead);
}
