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

use bus_core::testing::RedisAccess;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bus_core::{
    subscriber_fn, Bus, Error, Event, GroupStatus, HandlerError, Published, State, Subscriber,
    SubscriberOptions, WorkerHandle,
};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::proxy::FaultProxy;
use integration_tests::support::{
    claim_for, create_group, dead_letter_count as dlq_count, last_delivered, pending,
    pending_entry, read_as, recording, start_worker, Gauge, OwnRedis,
};
use integration_tests::{eventually, Recorder, TestEnv};
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

fn order_placed(order_id: u64, cents: u64) -> OrderPlaced {
    OrderPlaced { order_id, cents }
}

fn order_cancelled(order_id: u64, why: impl Into<String>) -> OrderCancelled {
    OrderCancelled {
        order_id,
        why: why.into(),
    }
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

/// A subscriber that records the order id of every `OrderPlaced` it handles.
fn placed_order_ids(
    opts: SubscriberOptions,
    rec: &Recorder,
) -> impl Subscriber<Event = OrderPlaced> {
    recording(opts, rec, |e: &OrderPlaced, _| e.order_id.to_string())
}

/// Starts a worker whose group `group` has one handler, of `OrderPlaced` (the order ids it
/// handled are in the returned recorder); `policy` sets the group's options for other types.
async fn start_placed_only(
    env: &TestEnv,
    group: &str,
    policy: fn(SubscriberOptions) -> SubscriberOptions,
) -> (Recorder, WorkerHandle) {
    let placed = Recorder::new();
    let opts = policy(SubscriberOptions::new(group).block_timeout(Duration::from_millis(200)));
    let w = start_worker(&env.bus, placed_order_ids(opts, &placed)).await;
    (placed, w)
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

/// Waits until `group` has been delivered everything up to `entry_id` and has nothing pending.
async fn settled(bus: &Bus, stream: &str, group: &str, entry_id: &str) {
    eventually(T, "every entry delivered and settled", || async {
        last_delivered(bus, stream, group).await.as_deref() == Some(entry_id)
            && pending(bus, stream, group).await == 0
    })
    .await;
}

/// Publishes `event` on `bus`.
async fn publish<E: Event>(bus: &Bus, event: &E) -> Published {
    bus.publish(event).await.expect("publish")
}

/// Waits until `handled` has recorded `n` events (`what` names them), then as [`settled`] for
/// `group` on "orders".
async fn handled_and_settled(
    bus: &Bus,
    group: &str,
    handled: &Recorder,
    n: usize,
    what: &str,
    last: &str,
) {
    handled.wait_for(T, what, |s| s.len() == n).await;
    settled(bus, "orders", group, last).await;
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

// ---------------------------------------------------------------------------------------------
// 4. One group, several event types; unknown types never vanish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_group_in_one_worker_dispatches_each_event_type_to_its_own_handler() {
    metrics_init();
    let env = TestEnv::new("multitype").await;
    let placed = Recorder::new();
    let cancelled = Recorder::new();
    let opts = SubscriberOptions::new("billing").block_timeout(Duration::from_millis(200));
    let w = env
        .bus
        .worker()
        .subscribe(recording(opts.clone(), &placed, |e: &OrderPlaced, ctx| {
            format!("{}:{}:{}", ctx.event_type(), e.order_id, e.cents)
        }))
        .subscribe(recording(opts, &cancelled, |e: &OrderCancelled, ctx| {
            format!("{}:{}:{}", ctx.event_type(), e.order_id, e.why)
        }))
        .start()
        .await
        .expect("two event types of one stream in one group and one worker must start");
    let mut last = String::new();
    for n in 0..4 {
        publish(&env.bus, &order_placed(n, 100 * n)).await;
        last = publish(&env.bus, &order_cancelled(n, format!("changed mind {n}")))
            .await
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
    // The default policy.
    let (placed, w) = start_placed_only(&env, group, |o| o).await;
    publish(&env.bus, &order_placed(1, 5)).await;
    for n in 0..2 {
        publish(&env.bus, &order_cancelled(n, "x")).await;
    }
    let last = publish(&env.bus, &order_placed(2, 5)).await.entry_id;
    handled_and_settled(&env.bus, group, &placed, 2, "both known events", &last).await;
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
    let (placed, w) = start_placed_only(&env, group, dead_letter_unknown).await;
    let unknown = publish(&env.bus, &order_cancelled(7, "x")).await;
    let last = publish(&env.bus, &order_placed(8, 1)).await.entry_id;
    handled_and_settled(&env.bus, group, &placed, 1, "the known event", &last).await;
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
    let old_bus = env.another_bus().await;
    let old = old_bus
        .worker()
        .consumer_name("old-version")
        .subscribe(placed_order_ids(opts.clone(), &old_placed))
        .start()
        .await
        .expect("old worker");

    // The new producer already publishes the renamed type.
    let mut renamed = HashSet::new();
    let mut last = String::new();
    for n in 0..3 {
        publish(&env.bus, &order_placed(n, 1)).await;
        let p = publish(
            &env.bus,
            &OrderCreated {
                order_id: 100 + n,
                cents: 2,
            },
        )
        .await;
        renamed.insert(p.event_id);
        last = p.entry_id;
    }
    handled_and_settled(&env.bus, group, &old_placed, 3, "the old type", &last).await;
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
    let cr = created.clone();
    let new_bus = env.another_bus().await;
    let new = new_bus
        .worker()
        .consumer_name("new-version")
        .subscribe(placed_order_ids(opts.clone(), &new_placed))
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

/// A subscriber of `X` whose every attempt records its number in `attempts` and fails (`fails
/// <attempt>`). From attempt `delete_from` on, an attempt first deletes its entry from `bus`'s
/// stream (as if trimmed or XDELed while it runs).
fn always_failing(
    opts: SubscriberOptions,
    attempts: &Arc<Mutex<Vec<u32>>>,
    bus: &Bus,
    delete_from: Option<u32>,
) -> impl Subscriber<Event = X> {
    let (attempts, client) = (attempts.clone(), bus.redis().clone());
    let key = bus.stream_key("x").expect("key");
    subscriber_fn(opts, move |_e: X, ctx| {
        let (a2, client, key) = (attempts.clone(), client.clone(), key.clone());
        async move {
            a2.lock().expect("lock").push(ctx.attempt());
            if delete_from.is_some_and(|a| ctx.attempt() >= a) {
                let _: i64 = client
                    .xdel(key.as_str(), ctx.entry_id())
                    .await
                    .map_err(|e| HandlerError::retry(e.to_string()))?;
            }
            Err::<(), _>(HandlerError::retry(format!("fails {}", ctx.attempt())))
        }
    })
}

/// Checks that `group` has no dead letter (`deleted_entries` is what must not be dead-lettered)
/// and waits until its `deleted_pending` counter reaches `deleted` (`counted` names that).
async fn expect_counted_as_deleted(
    bus: &Bus,
    group: &str,
    deleted_entries: &str,
    deleted: u64,
    counted: &str,
) {
    let dead = bus
        .dead_letters("x", group)
        .expect("dlq")
        .list(10)
        .await
        .expect("list");
    assert!(
        dead.is_empty(),
        "{deleted_entries} must not be dead-lettered (dl.missing: {}): {dead:?}",
        missing_data_dead_letters(bus, "x", group).await
    );
    eventually(Duration::from_secs(2), counted, || async {
        counter("streambus_deleted_pending_total", &[("group", group)]) == deleted
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_deleted_while_waiting_for_its_retry_is_counted_as_deleted_not_lost_or_dead() {
    metrics_init();
    let env = TestEnv::new("delwait").await;
    let group = "del-wait";
    let attempts = Arc::new(Mutex::new(Vec::<u32>::new()));
    let backoff = Duration::from_secs(1);
    let opts = SubscriberOptions::new(group)
        .max_attempts(2)
        .backoff_min(backoff)
        .backoff_max(backoff)
        // Heartbeats every 200 ms: several renewals before the retry is due.
        .visibility_timeout(Duration::from_millis(600))
        .block_timeout(Duration::from_millis(200));
    let w = start_worker(&env.bus, always_failing(opts, &attempts, &env.bus, None)).await;
    let p = publish(&env.bus, &X { n: 1 }).await;
    let key = env.bus.stream_key("x").expect("key");
    let records = env.attempt_records_key("x", group);
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
    let opts = SubscriberOptions::new(group)
        .max_attempts(2)
        .backoff_min(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(100))
        // Heartbeats rarely: the handler's own outcome meets the deletion first.
        .visibility_timeout(Duration::from_secs(6))
        .block_timeout(Duration::from_millis(200));
    // Trimmed or XDELed while the last attempt runs; then the attempt fails.
    let w = start_worker(&env.bus, always_failing(opts, &attempts, &env.bus, Some(2))).await;
    publish(&env.bus, &X { n: 1 }).await;
    eventually(T, "the last attempt to end", || async {
        attempts.lock().expect("lock").len() == 2 && pending(&env.bus, "x", group).await == 0
    })
    .await;
    expect_counted_as_deleted(
        &env.bus,
        group,
        "an entry deleted during its last attempt",
        1,
        "the deletion to be counted",
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
    let records = env.attempt_records_key("x", group);
    let left: u64 = env.bus.redis().hlen(records.as_str()).await.expect("HLEN");
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumers_own_entries_deleted_meanwhile_are_not_dead_lettered_at_the_limit() {
    metrics_init();
    let env = TestEnv::new("delown").await;
    let group = "del-own";
    let key = env.bus.stream_key("x").expect("key");
    let records = env.attempt_records_key("x", group);
    let r = env.bus.redis();
    create_group(&env.bus, "x", group).await;
    // First in the pending list: an entry of a stalled consumer, reclaimable at once. The
    // scanner's first round claims it and stops there (one slot), so it never sweeps the
    // deleted entries below out of the pending list: only the takes meet them.
    let stalled = publish(&env.bus, &X { n: 0 }).await.entry_id;
    read_as(&env.bus, "x", group, "stalled", 1).await;
    // A previous life of consumer "fixed" received two entries (delivered twice each) and died;
    // meanwhile both were deleted from the stream (trimmed or XDEL). The first had started its
    // second attempt alone (record kind `s`, one attempt charged before): its attempts are used
    // up, so its take moves it to the dead letters. The second (no record) is a suspect that
    // must run alone first.
    let at_limit = publish(&env.bus, &X { n: 1 }).await.entry_id;
    let suspect = publish(&env.bus, &X { n: 2 }).await.entry_id;
    read_as(&env.bus, "x", group, "fixed", 10).await;
    let ids = vec![at_limit.as_str(), suspect.as_str()];
    claim_for(&env.bus, "x", group, "fixed", ids.clone(), None, Some(2)).await;
    claim_for(
        &env.bus,
        "x",
        group,
        "stalled",
        vec![stalled.as_str()],
        Some(3_600_000),
        None,
    )
    .await;
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
    let w = env
        .bus
        .worker()
        .consumer_name("fixed")
        .subscribe(recording(
            SubscriberOptions::new(group)
                .max_attempts(2)
                .concurrency(1)
                .visibility_timeout(Duration::from_secs(30))
                .block_timeout(Duration::from_millis(200)),
            &ran,
            |e: &X, _| e.n.to_string(),
        ))
        .start()
        .await
        .expect("start");
    eventually(
        T,
        "the deleted entries to leave the pending list",
        || async {
            pending_entry(&env.bus, "x", group, &at_limit)
                .await
                .is_none()
                && pending_entry(&env.bus, "x", group, &suspect)
                    .await
                    .is_none()
        },
    )
    .await;
    expect_counted_as_deleted(
        &env.bus,
        group,
        "deleted entries",
        2,
        "both deletions counted",
    )
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
    in_flight: Arc<Gauge>,
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
                    let _running = runs.in_flight.enter();
                    rec.record(format!("start{a}"));
                    match a {
                        1 => Err(HandlerError::retry("attempt 1 fails")),
                        2 => {
                            let _ = zombie_rx.wait_for(|v| *v).await;
                            Err(HandlerError::retry("the zombie fails"))
                        }
                        _ => {
                            let _ = rest_rx.wait_for(|v| *v).await;
                            Ok(())
                        }
                    }
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let me = w.consumer_name().to_owned();
    let id = publish(&env.bus, &X { n: 1 }).await.entry_id;
    rec.wait_for(T, "attempt 2", |s| s.contains_key("start2"))
        .await;

    // Attempt 2 loses its lease while it runs: another consumer owns the entry (JUSTID: no
    // delivery counted; repeated, so it never idles past the visibility timeout meanwhile)
    // until this worker's heartbeat has noticed.
    let lost = |n| counter("streambus_lease_lost_total", &[("group", group)]) >= n;
    eventually(T, "the heartbeat to see the lease lost", || async {
        claim_for(&env.bus, "x", group, "intruder", vec![&id], None, None).await;
        lost(1)
    })
    .await;
    // The intruder stalls: its entry becomes reclaimable, and this worker's scanner takes it
    // back while attempt 2 (now a zombie) still runs.
    claim_for(
        &env.bus,
        "x",
        group,
        "intruder",
        vec![&id],
        Some(3_600_000),
        None,
    )
    .await;
    eventually(T, "the scanner to reclaim the entry", || async {
        pending_entry(&env.bus, "x", group, &id)
            .await
            .is_some_and(|p| p.consumer == me)
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
        let row = pending_entry(&env.bus, "x", group, &id)
            .await
            .expect("attempt 3's entry must stay pending while it runs");
        let idle = row.idle_ms;
        assert_eq!(row.consumer, me);
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
        runs.in_flight.max(),
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

/// A worker (consumer `consumer`, if named) that rejects every `Req` in `group` (status tracked),
/// on an own redis-server: the worker talks to Redis through a fault proxy, the observer (which
/// publishes and waits) directly.
struct RejectingBehindAProxy {
    _redis: OwnRedis,
    proxy: FaultProxy,
    observer: Bus,
    w: WorkerHandle,
    /// The warm-up event's status (see [`rejecting_behind_a_proxy`]).
    warm_up: GroupStatus,
}

/// Starts the setup above and warms it up: the dead-letter script is loaded into the server's
/// cache, so a faulty call afterwards is the script run itself (not an EVALSHA answered with
/// NOSCRIPT).
async fn rejecting_behind_a_proxy(
    label: &str,
    group: &str,
    consumer: Option<&str>,
) -> RejectingBehindAProxy {
    let redis = OwnRedis::start(label);
    let proxy = redis.proxy();
    let worker_bus = redis.bus_via(&proxy, None).await;
    let observer = redis.bus(None).await;
    let mut worker = worker_bus.worker();
    if let Some(c) = consumer {
        worker = worker.consumer_name(c);
    }
    let w = worker
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
    let warm_up = observer
        .wait_for::<Req>(&p0.event_id, group, Duration::from_secs(10))
        .await
        .expect("warm-up status");
    RejectingBehindAProxy {
        _redis: redis,
        proxy,
        observer,
        w,
        warm_up,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_re_sent_after_its_reply_was_lost_still_records_the_dead_status() {
    metrics_init();
    let group = "req-status";
    let RejectingBehindAProxy {
        _redis,
        proxy,
        observer,
        w,
        warm_up,
    } = rejecting_behind_a_proxy("lostdl", group, None).await;
    assert_eq!(warm_up.state, State::Dead);

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
    let group = "req-status16";
    let RejectingBehindAProxy {
        _redis,
        proxy,
        observer,
        w,
        ..
    } = rejecting_behind_a_proxy("lostdl16", group, Some("w1")).await;

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
