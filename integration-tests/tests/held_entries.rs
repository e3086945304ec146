//! Held entries: suspects (entries whose last attempt ended without an outcome) must not stall a
//! subscriber, failed entries waiting for their retries are bounded per worker (the backlog stays
//! in the stream), handler timeouts abandon an attempt, and attempt records are replaced when an
//! attempt starts and never outlive their entry.
//!
//! The tests at the top compile against the old worker core too (they show its faults at run
//! time); the ones in `mod new_options` at the end use options the old core did not have
//! (`handler_timeout`, `max_held`).

use bus_core::testing::RedisAccess;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{
    subscriber_fn, Bus, DeadLetter, DeadLetters, Event, HandlerError, Published, SubscriberOptions,
    WorkerHandle,
};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::procs::{read_ledgers, LedgerLine, Task, TempDir, WorkerArgs, WorkerProc};
use integration_tests::support::{
    claim_for, create_group, dead_letter_count, group_info, pending, pending_entry, read_as,
    start_worker, Gauge,
};
use integration_tests::{eventually, Recorder, TestEnv};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "held")]
struct Work {
    n: u64,
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Records `key` when dropped (to see that an abandoned handler future was dropped).
#[derive(Debug)]
struct OnDrop(Recorder, String);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.record(self.1.clone());
    }
}

/// The group's attempt-record hash (normal lane) for `stream`.
fn records_key(env: &TestEnv, stream: &str) -> String {
    env.attempt_records_key(stream, "g")
}

async fn record_of(bus: &Bus, key: &str, id: &str) -> Option<String> {
    bus.redis().hget(key, id).await.expect("HGET")
}

async fn records(bus: &Bus, key: &str) -> HashMap<String, String> {
    bus.redis().hgetall(key).await.expect("HGETALL")
}

/// The records left in `key` once it emptied or `within` passed.
async fn records_left(bus: &Bus, key: &str, within: Duration) -> HashMap<String, String> {
    let _ = tokio::time::timeout(within, async {
        while !records(bus, key).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    records(bus, key).await
}

/// A field of the group's XINFO GROUPS row.
async fn group_field(bus: &Bus, stream: &str, field: &str) -> Option<u64> {
    group_info(bus, stream, "g")
        .await
        .and_then(|g| g.get(field).and_then(Value::as_u64))
}

/// The pending count XINFO CONSUMERS reports for one consumer of the group.
async fn consumer_pending(bus: &Bus, stream: &str, consumer: &str) -> u64 {
    let key = bus.stream_key(stream).expect("key");
    let cs: Vec<HashMap<String, Value>> = bus
        .redis()
        .xinfo_consumers(key.as_str(), "g")
        .await
        .expect("XINFO CONSUMERS");
    cs.iter()
        .find(|c| c.get("name").and_then(Value::as_string).as_deref() == Some(consumer))
        .and_then(|c| c.get("pending"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Waits until a ledger line matches `pred`; returns it.
async fn ledger_line(dir: &TempDir, what: &str, pred: impl Fn(&LedgerLine) -> bool) -> LedgerLine {
    let deadline = Instant::now() + T;
    loop {
        if let Some(l) = read_ledgers(&dir.0).into_iter().find(|l| pred(l)) {
            return l;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until `done` holds. Panics with `dead_lettered(d)` if a dead letter `d` shows up first,
/// and with `never` after `T`.
async fn until_unless_dead_lettered<F, Fut>(
    dlq: &DeadLetters,
    never: &str,
    mut done: F,
    dead_lettered: impl Fn(&DeadLetter) -> String,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + T;
    while !done().await {
        if dlq.count().await.expect("n") > 0 {
            let d = &dlq.list(1).await.expect("list")[0];
            panic!("{}", dead_lettered(d));
        }
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by several tests

/// Hole 2's setup: a suspect (event 1000, left pending by a dead consumer, no attempt record) and
/// event 0, whose handler hangs on every attempt, run by a worker (concurrency 4) with `opts`.
/// Returns once event 0 hangs (`hang` says what is awaited), the worker's scanner has claimed the
/// suspect (it now waits to run alone) and events 1 to 10 are published.
struct HungBesideSuspect {
    env: TestEnv,
    suspect: Published,
    hung: Published,
    rec: Recorder,
    w: WorkerHandle,
}

async fn hung_handler_beside_a_waiting_suspect(
    label: &str,
    opts: SubscriberOptions,
    hang: &str,
) -> HungBesideSuspect {
    let env = TestEnv::new(label).await;
    let suspect = env.bus.publish(&Work { n: 1000 }).await.expect("publish");
    create_group(&env.bus, "held", "g").await;
    read_as(&env.bus, "held", "g", "dead", 1).await;
    let hung = env.bus.publish(&Work { n: 0 }).await.expect("publish");
    let rec = Recorder::new();
    let gauge = Arc::new(Gauge::default());
    let (r2, g2) = (rec.clone(), gauge.clone());
    let w = env
        .bus
        .worker()
        .shutdown_grace(Duration::from_millis(200))
        .subscribe(subscriber_fn(
            opts.concurrency(4)
                .visibility_timeout(Duration::from_millis(300))
                .block_timeout(Duration::from_millis(200)),
            move |w: Work, ctx| {
                let (r2, g2) = (r2.clone(), g2.clone());
                async move {
                    let _running = g2.enter();
                    r2.record(format!("{}@{}", w.n, ctx.attempt()));
                    if w.n == 1000 {
                        r2.record(format!("suspect ran beside {}", g2.now() - 1));
                    }
                    if w.n == 0 {
                        std::future::pending::<()>().await;
                    }
                    r2.record(format!("done {}", w.n));
                    Ok::<_, HandlerError>(())
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let me = w.consumer_name().to_owned();
    rec.wait_for(T, hang, |s| s.contains_key("0@1")).await;
    // The scanner claims the suspect (idle past the visibility timeout): it now waits to run
    // alone.
    eventually(T, "the suspect claimed by the worker", || async {
        pending_entry(&env.bus, "held", "g", &suspect.entry_id)
            .await
            .is_some_and(|p| p.consumer == me)
    })
    .await;
    let fresh: Vec<Work> = (1..=10).map(|n| Work { n }).collect();
    env.bus.publish_batch(&fresh).await.expect("publish");
    HungBesideSuspect {
        env,
        suspect,
        hung,
        rec,
        w,
    }
}

/// Hole 5's setup: `events` events are published, then a worker with `opts` takes them while every
/// attempt fails ("downstream is down") until [`end`](Outage::end).
struct Outage {
    env: TestEnv,
    events: u64,
    down: Arc<AtomicBool>,
    /// Failed attempts.
    failed: Arc<AtomicUsize>,
    /// Every attempt started: (event, attempt).
    starts: Arc<Mutex<Vec<(u64, u32)>>>,
    /// Events handled.
    ok: Recorder,
    w: WorkerHandle,
    me: String,
}

impl Outage {
    async fn start(label: &str, events: u64, opts: SubscriberOptions) -> Outage {
        let env = TestEnv::new(label).await;
        let all: Vec<Work> = (0..events).map(|n| Work { n }).collect();
        for chunk in all.chunks(100) {
            env.bus.publish_batch(chunk).await.expect("publish");
        }
        let down = Arc::new(AtomicBool::new(true));
        let failed = Arc::new(AtomicUsize::new(0));
        let starts: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
        let ok = Recorder::new();
        let (d2, f2, s2, ok2) = (down.clone(), failed.clone(), starts.clone(), ok.clone());
        let w = start_worker(
            &env.bus,
            subscriber_fn(opts, move |w: Work, ctx| {
                let (d2, f2, s2, ok2) = (d2.clone(), f2.clone(), s2.clone(), ok2.clone());
                async move {
                    s2.lock().expect("lock").push((w.n, ctx.attempt()));
                    if d2.load(Ordering::SeqCst) {
                        f2.fetch_add(1, Ordering::SeqCst);
                        return Err(HandlerError::retry("downstream is down"));
                    }
                    ok2.record(w.n.to_string());
                    Ok(())
                }
            }),
        )
        .await;
        let me = w.consumer_name().to_owned();
        Outage {
            env,
            events,
            down,
            failed,
            starts,
            ok,
            w,
            me,
        }
    }

    /// Waits until the first retry starts; returns the events taken from the stream until then.
    async fn taken_until_the_first_retry(&self) -> HashSet<u64> {
        eventually(T, "the first retry to start", || async {
            self.starts
                .lock()
                .expect("lock")
                .iter()
                .any(|(_, a)| *a >= 2)
        })
        .await;
        self.starts
            .lock()
            .expect("lock")
            .iter()
            .map(|(n, _)| *n)
            .collect()
    }

    /// Ends the outage, waits until every event is handled (within `timeout`; `what` names it)
    /// and acknowledged, and shuts the worker down.
    async fn end(self, timeout: Duration, what: &str) -> TestEnv {
        self.down.store(false, Ordering::SeqCst);
        let events = self.events as usize;
        self.ok.wait_for(timeout, what, |s| s.len() == events).await;
        eventually(T, "all acknowledged", || async {
            pending(&self.env.bus, "held", "g").await == 0
        })
        .await;
        self.w.shutdown().await.expect("shutdown");
        self.env
    }
}

/// A zombie success up to the zombie's release: worker A (consumer "a", `a_opts`) runs event 1
/// and its handler waits for `release_a`; A's lease is lost (the entry is given to consumer "b"
/// with XCLAIM … JUSTID, as the scanner does); worker B (consumer "b", `b_opts`, another bus)
/// runs an attempt that fails with a retry in 60 s. Returns once B's retry record is written.
struct ZombieSuccess {
    env: TestEnv,
    rkey: String,
    rec: Recorder,
    release_a: Arc<tokio::sync::Notify>,
    a: WorkerHandle,
    b: WorkerHandle,
}

async fn zombie_success(
    label: &str,
    a_opts: SubscriberOptions,
    b_opts: SubscriberOptions,
) -> ZombieSuccess {
    let env = TestEnv::new(label).await;
    let rkey = records_key(&env, "held");
    let rec = Recorder::new();
    let release_a = Arc::new(tokio::sync::Notify::new());
    let entry = env.bus.publish(&Work { n: 1 }).await.expect("publish");
    let (ra, rel) = (rec.clone(), release_a.clone());
    let a = env
        .bus
        .worker()
        .consumer_name("a")
        .subscribe(subscriber_fn(a_opts, move |_w: Work, ctx| {
            let (ra, rel) = (ra.clone(), rel.clone());
            async move {
                ra.record(format!("a start {}", ctx.attempt()));
                rel.notified().await;
                ra.record("a done");
                Ok::<_, HandlerError>(())
            }
        }))
        .start()
        .await
        .expect("start a");
    rec.wait_for(T, "a's handler to start", |s| s.contains_key("a start 1"))
        .await;
    // A's lease is lost: the entry now belongs to consumer "b".
    claim_for(
        &env.bus,
        "held",
        "g",
        "b",
        vec![entry.entry_id.as_str()],
        None,
        None,
    )
    .await;
    let rb = rec.clone();
    let b_bus = env.another_bus().await;
    let b = b_bus
        .worker()
        .consumer_name("b")
        .subscribe(subscriber_fn(b_opts, move |_w: Work, ctx| {
            let rb = rb.clone();
            async move {
                rb.record(format!("b attempt {}", ctx.attempt()));
                Err::<(), _>(HandlerError::retry_after(
                    Duration::from_secs(60),
                    "b failed",
                ))
            }
        }))
        .start()
        .await
        .expect("start b");
    rec.wait_for(T, "b's attempt", |s| {
        s.keys().any(|k| k.starts_with("b attempt"))
    })
    .await;
    eventually(T, "b's retry record", || async {
        record_of(&env.bus, &rkey, &entry.entry_id)
            .await
            .is_some_and(|r| r.contains("b failed"))
    })
    .await;
    ZombieSuccess {
        env,
        rkey,
        rec,
        release_a,
        a,
        b,
    }
}

/// Real processes, task `n`: attempt 1 fails ("planned failure 1"); attempt 2 (a retry, started
/// beside others) takes 1.5 s. Returns while worker 1 (max_attempts 2, concurrency 4, visibility
/// timeout 1 s) runs attempt 2.
struct RetryRunning {
    env: TestEnv,
    dir: TempDir,
    rkey: String,
    args: WorkerArgs,
    w1: WorkerProc,
    entry: Published,
}

async fn a_retry_running_in_worker_1(label: &str, n: u64) -> RetryRunning {
    let env = TestEnv::new(label).await;
    let dir = TempDir::new(label);
    let rkey = records_key(&env, "tasks");
    let mut args = WorkerArgs::new(&env.url, &env.prefix, "g", &dir.ledger("w1"));
    args.max_attempts = 2;
    args.concurrency = 4;
    args.visibility_timeout = Duration::from_secs(1);
    let w1 = WorkerProc::spawn(&args).expect("worker 1");
    let entry = env
        .bus
        .publish(&Task {
            slow_ms: 1500,
            fail_times: 1,
            ..Task::new(n)
        })
        .await
        .expect("publish");
    let pid1 = w1.pid();
    ledger_line(&dir, "attempt 2 in worker 1", |l| {
        l.kind == "start" && l.n == n && l.attempt == 2 && l.pid == pid1
    })
    .await;
    RetryRunning {
        env,
        dir,
        rkey,
        args,
        w1,
        entry,
    }
}

impl RetryRunning {
    /// Starts the next worker process, with its own ledger `ledger`.
    fn next_worker(&mut self, ledger: &str) -> WorkerProc {
        self.args.ledger = self.dir.ledger(ledger);
        WorkerProc::spawn(&self.args).unwrap_or_else(|e| panic!("worker {ledger}: {e}"))
    }
}

/// A worker (max_attempts 3, handler timeout 300 ms) on `env`'s bus whose handler records
/// `start <attempt>`, then `finished <attempt>` or, when its future is dropped first, `dropped
/// <attempt>`. Attempts for which `hangs` holds sleep far longer than the test waits: only
/// abandonment ends them.
async fn start_timing_out_worker(
    env: &TestEnv,
    rec: &Recorder,
    hangs: fn(u32) -> bool,
) -> WorkerHandle {
    let r2 = rec.clone();
    start_worker(
        &env.bus,
        subscriber_fn(
            SubscriberOptions::new("g")
                .max_attempts(3)
                .handler_timeout(Duration::from_millis(300))
                .backoff_min(Duration::from_millis(50))
                .backoff_max(Duration::from_millis(100)),
            move |_w: Work, ctx| {
                let r2 = r2.clone();
                async move {
                    let a = ctx.attempt();
                    r2.record(format!("start {a}"));
                    let mut dropped = OnDrop(r2.clone(), format!("dropped {a}"));
                    if hangs(a) {
                        tokio::time::sleep(Duration::from_secs(120)).await;
                    }
                    dropped.1 = format!("finished {a}");
                    Ok::<_, HandlerError>(())
                }
            },
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Hole 2: suspect isolation must not stall the subscriber.

/// A deploy: worker A (concurrency 8, read-ahead 8) is stopped with a short grace while 8 slow
/// handlers run and 8 more entries wait for a slot. Its 16 entries are released for immediate
/// reclaim; worker B must run them side by side (they are no suspects: the released ones never
/// started, the abandoned ones failed at shutdown), not one at a time with the whole worker
/// blocked behind each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_released_at_a_graceful_deploy_run_concurrently_in_the_next_worker() {
    let env = TestEnv::new("deploy").await;
    let opts = SubscriberOptions::new("g")
        .concurrency(8)
        .prefetch(8)
        .visibility_timeout(Duration::from_secs(1));
    let events: Vec<Work> = (0..16).map(|n| Work { n }).collect();
    env.bus.publish_batch(&events).await.expect("publish");

    let a_gauge = Arc::new(Gauge::default());
    let a_started: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (ag, ast) = (a_gauge.clone(), a_started.clone());
    let a = env
        .bus
        .worker()
        .shutdown_grace(Duration::from_millis(100))
        .subscribe(subscriber_fn(opts.clone(), move |w: Work, _ctx| {
            let (ag, ast) = (ag.clone(), ast.clone());
            async move {
                let _running = ag.enter();
                ast.lock().expect("lock").insert(w.n);
                // Longer than the grace: abandoned at shutdown.
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, HandlerError>(())
            }
        }))
        .start()
        .await
        .expect("start a");
    eventually(T, "8 handlers running in a, 8 more read ahead", || async {
        a_gauge.now() == 8 && pending(&env.bus, "held", "g").await == 16
    })
    .await;
    tokio::time::timeout(T, a.shutdown())
        .await
        .expect("a's shutdown must end")
        .expect("shutdown a");
    let a_started = a_started.lock().expect("lock").clone();
    assert_eq!(a_started.len(), 8, "a ran 8 handlers: {a_started:?}");
    assert_eq!(
        pending(&env.bus, "held", "g").await,
        16,
        "all 16 are left pending"
    );

    let b_gauge = Arc::new(Gauge::default());
    let b_runs: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let done = Recorder::new();
    let (bg, br, bd) = (b_gauge.clone(), b_runs.clone(), done.clone());
    let b_bus = env.another_bus().await;
    let b = b_bus
        .worker()
        .subscribe(subscriber_fn(opts, move |w: Work, ctx| {
            let (bg, br, bd) = (bg.clone(), br.clone(), bd.clone());
            async move {
                let _running = bg.enter();
                br.lock().expect("lock").push((w.n, ctx.attempt()));
                tokio::time::sleep(Duration::from_millis(600)).await;
                bd.record(w.n.to_string());
                Ok::<_, HandlerError>(())
            }
        }))
        .start()
        .await
        .expect("start b");
    done.wait_for(T, "b to handle all 16 released entries", |s| s.len() == 16)
        .await;
    eventually(T, "all acknowledged", || async {
        pending(&env.bus, "held", "g").await == 0
    })
    .await;
    b.shutdown().await.expect("shutdown b");

    let max = b_gauge.max();
    assert!(
        max >= 4,
        "worker b ran the 16 released entries at most {max} at a time (concurrency 8): \
         released entries were treated as suspects and serialised"
    );
    // Released before starting: not an attempt (attempt 1 again). Abandoned at shutdown: a
    // failed attempt 1, so b runs attempt 2.
    let runs = b_runs.lock().expect("lock").clone();
    assert_eq!(
        runs.len(),
        16,
        "each released entry ran once in b: {runs:?}"
    );
    for (n, attempt) in &runs {
        let want = if a_started.contains(n) { 2 } else { 1 };
        assert_eq!(
            *attempt,
            want,
            "entry {n} (started in a: {}) ran in b as attempt {attempt}: {runs:?}",
            a_started.contains(n)
        );
    }
    assert_eq!(dead_letter_count(&env.bus, "held", "g").await, 0);
}

/// One handler hangs for good (no handler timeout) and a suspect (left pending by a dead
/// consumer, no attempt record) is waiting to run alone: new events published afterwards must
/// still be read and handled. The suspect waits (it cannot be alone beside a hung handler) but
/// is neither lost nor dead-lettered, and shutdown is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_and_a_waiting_suspect_do_not_stop_new_events() {
    let HungBesideSuspect {
        env,
        suspect,
        rec,
        w,
        ..
    } = hung_handler_beside_a_waiting_suspect(
        "hungsuspect",
        SubscriberOptions::new("g"),
        "the handler of event 0 to hang",
    )
    .await;
    rec.wait_for(
        Duration::from_secs(15),
        "the events published after the hang and the suspect",
        |s| (1..=10).all(|n| s.contains_key(&format!("done {n}"))),
    )
    .await;
    let started = Instant::now();
    tokio::time::timeout(T, w.shutdown())
        .await
        .expect("shutdown must not hang")
        .expect("shutdown");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing lost: the suspect was handled or is still pending, never dead-lettered.
    assert_eq!(dead_letter_count(&env.bus, "held", "g").await, 0);
    let s = rec.snapshot();
    assert!(
        s.contains_key("done 1000")
            || pending_entry(&env.bus, "held", "g", &suspect.entry_id)
                .await
                .is_some(),
        "the suspect was lost: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hole 5: waiting retries are bounded; the backlog stays in the stream during an outage.

/// 300 events, every attempt fails (downstream outage) with a 5 s backoff, concurrency 4, the
/// default bound on held entries (2 × concurrency = 8). Until the first retry starts, the worker
/// must have taken no more than 8 events from the stream: its pending entries stay at most 8 and
/// the group's lag holds the rest. Then the outage ends and every event is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_a_worker_holds_at_most_max_held_entries_and_the_backlog_stays_in_the_stream(
) {
    const EVENTS: u64 = 300;
    const MAX_HELD: usize = 8; // the default: 2 × concurrency + prefetch (0)
    let outage = Outage::start(
        "outage",
        EVENTS,
        SubscriberOptions::new("g")
            .concurrency(4)
            .visibility_timeout(Duration::from_secs(2))
            .backoff_min(Duration::from_secs(5))
            .backoff_max(Duration::from_secs(5)),
    )
    .await;
    let bus = &outage.env.bus;
    eventually(T, "the first attempts to fail", || async {
        outage.failed.load(Ordering::SeqCst) >= MAX_HELD
    })
    .await;
    // Nothing can leave the worker while every attempt fails: until a retry is due (5 s), what
    // it took from the stream is what it holds.
    let taken = outage.taken_until_the_first_retry().await;
    let held = consumer_pending(bus, "held", &outage.me).await;
    let lag = group_field(bus, "held", "lag").await;
    let entries_read = group_field(bus, "held", "entries-read").await;
    assert!(
        taken.len() <= MAX_HELD,
        "the worker took {} events from the stream into memory while every attempt failed \
         (bound {MAX_HELD}); {} attempts failed",
        taken.len(),
        outage.failed.load(Ordering::SeqCst)
    );
    assert!(
        held <= MAX_HELD as u64,
        "the consumer has {held} entries pending (bound {MAX_HELD})"
    );
    assert!(
        lag.is_some_and(|l| l >= EVENTS - MAX_HELD as u64),
        "the backlog must stay in the stream: lag {lag:?}, entries-read {entries_read:?}"
    );

    // The outage ends: everything is handled, nothing lost or dead-lettered.
    let env = outage
        .end(Duration::from_secs(60), "all 300 events handled")
        .await;
    assert_eq!(dead_letter_count(&env.bus, "held", "g").await, 0);
    assert_eq!(group_field(&env.bus, "held", "lag").await, Some(0));
}

// ---------------------------------------------------------------------------------------------
// Hole 6: attempt records.

/// Retries that succeed, retries that run out (dead letters) and an entry deleted from the stream
/// during a failing attempt: once everything settled, the record hash is gone. (The old retry
/// script wrote the record before it found the entry deleted, leaving a field with no TTL that
/// nothing ever removes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_records_do_not_outlive_their_entries() {
    let env = TestEnv::new("records").await;
    let key = env.bus.stream_key("held").expect("key");
    let deleted = Recorder::new();
    let ok = Recorder::new();
    let (bus2, del2, ok2, key2) = (env.bus.clone(), deleted.clone(), ok.clone(), key.clone());
    let w = start_worker(
        &env.bus,
        subscriber_fn(
            SubscriberOptions::new("g")
                .max_attempts(2)
                .backoff_min(Duration::from_millis(50))
                .backoff_max(Duration::from_millis(100)),
            move |w: Work, ctx| {
                let (bus2, del2, ok2, key2) =
                    (bus2.clone(), del2.clone(), ok2.clone(), key2.clone());
                async move {
                    match w.n {
                        // Fails once, then succeeds.
                        0..=5 if ctx.attempt() == 1 => {
                            Err(HandlerError::retry(format!("transient {}", w.n)))
                        }
                        0..=5 => {
                            ok2.record(w.n.to_string());
                            Ok(())
                        }
                        // Always fails: dead-lettered after 2 attempts.
                        6 | 7 => Err(HandlerError::retry("permanent")),
                        // Trimmed away while its attempt runs, and the attempt fails.
                        _ => {
                            let _: i64 = bus2
                                .redis()
                                .xdel(key2.as_str(), ctx.entry_id())
                                .await
                                .expect("XDEL");
                            del2.record(w.n.to_string());
                            Err(HandlerError::retry("failed after the entry was deleted"))
                        }
                    }
                }
            },
        ),
    )
    .await;
    let events: Vec<Work> = (0..9).map(|n| Work { n }).collect();
    env.bus.publish_batch(&events).await.expect("publish");
    let dlq = env.bus.dead_letters("held", "g").expect("dlq");
    ok.wait_for(T, "the retried events to succeed", |s| s.len() == 6)
        .await;
    deleted
        .wait_for(T, "the deleted entry's attempt", |s| s.len() == 1)
        .await;
    eventually(T, "the two dead letters and nothing pending", || async {
        dlq.count().await.expect("n") == 2 && pending(&env.bus, "held", "g").await == 0
    })
    .await;
    let left = records_left(&env.bus, &records_key(&env, "held"), Duration::from_secs(5)).await;
    w.shutdown().await.expect("shutdown");
    assert!(
        left.is_empty(),
        "attempt records left after every entry settled (no TTL: kept forever): {left:?}"
    );
    for d in dlq.list(10).await.expect("list") {
        assert_eq!(d.reason, "max_attempts");
        assert_eq!(d.error, "permanent");
    }
}

/// A zombie success: worker A's handler outlives its lease (another worker took the entry over:
/// here the takeover is made with XCLAIM … JUSTID, as the scanner does), worker B's attempt fails
/// and records a retry, then A's handler succeeds and acknowledges the entry. B must drop the
/// entry and its record; the record must not stay behind in the hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_success_leaves_no_orphan_attempt_record() {
    let opts = SubscriberOptions::new("g")
        .concurrency(2)
        .visibility_timeout(Duration::from_millis(400));
    let ZombieSuccess {
        env,
        rkey,
        rec,
        release_a,
        a,
        b,
        ..
    } = zombie_success("zombie", opts.clone(), opts).await;
    // The zombie finishes and acknowledges.
    release_a.notify_one();
    rec.wait_for(T, "a's handler to finish", |s| s.contains_key("a done"))
        .await;
    eventually(T, "the entry acknowledged", || async {
        pending(&env.bus, "held", "g").await == 0
    })
    .await;
    let left = records_left(&env.bus, &rkey, Duration::from_secs(10)).await;
    b.shutdown().await.expect("shutdown b");
    a.shutdown().await.expect("shutdown a");
    assert!(
        left.is_empty(),
        "an orphan attempt record (no TTL) outlived the acknowledged entry: {left:?}"
    );
    let s = rec.snapshot();
    assert_eq!(s.get("a done"), Some(&1), "{s:?}");
    assert_eq!(
        s.keys().filter(|k| k.starts_with("b attempt")).count(),
        1,
        "b's retry must not run once the entry is acknowledged: {s:?}"
    );
    assert_eq!(dead_letter_count(&env.bus, "held", "g").await, 0);
}

/// Real processes. Attempt 1 fails ("planned failure 1"); attempt 2 (a retry, started beside
/// others) is cut short by SIGKILL. The attempt record must already have been replaced when
/// attempt 2 started (kind `m`), so the next worker knows attempt 2 ended without an outcome:
/// not charged, it runs again alone (record kind `s`) as attempt 2, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_retry_is_recognised_and_the_entry_runs_again_alone() {
    let mut run = a_retry_running_in_worker_1("crashretry", 7).await;
    let rec = record_of(&run.env.bus, &run.rkey, &run.entry.entry_id).await;
    assert!(
        rec.as_deref()
            .is_some_and(|r| r.starts_with("2|m|") || r.starts_with("2|s|")),
        "while attempt 2 runs, its record must say an attempt started (2|m|… or 2|s|…), not \
         still describe attempt 1's failure: {rec:?}"
    );
    assert!(!read_ledgers(&run.dir.0).iter().any(|l| l.kind == "done"));
    run.w1.kill();

    let w2 = run.next_worker("w2");
    let pid2 = w2.pid();
    let dlq = run.env.bus.dead_letters("tasks", "g").expect("dlq");
    until_unless_dead_lettered(
        &dlq,
        "worker 2 never finished task 7",
        || async {
            read_ledgers(&run.dir.0)
                .iter()
                .any(|l| l.kind == "done" && l.n == 7 && l.pid == pid2)
                && pending(&run.env.bus, "tasks", "g").await == 0
        },
        |d| {
            format!(
                "dead-lettered instead of run again: reason {}, attempts {}, error {:?}",
                d.reason, d.attempts, d.error
            )
        },
    )
    .await;
    let lines = read_ledgers(&run.dir.0);
    let in_w2: Vec<u32> = lines
        .iter()
        .filter(|l| l.kind == "start" && l.pid == pid2)
        .map(|l| l.attempt)
        .collect();
    assert_eq!(
        in_w2,
        vec![2],
        "the crash beside others is not charged: w2 runs attempt 2: {lines:?}"
    );
    assert!(record_of(&run.env.bus, &run.rkey, &run.entry.entry_id)
        .await
        .is_none());
}

/// As above, then the run alone is SIGKILLed too: that crash is charged (2 of 2), so the next
/// worker dead-letters the entry, and the dead letter says the last attempt ended without an
/// outcome instead of repeating attempt 1's stale error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_on_the_last_attempt_is_dead_lettered_as_no_outcome_not_with_a_stale_error() {
    let mut run = a_retry_running_in_worker_1("stale", 9).await;
    let rec1 = record_of(&run.env.bus, &run.rkey, &run.entry.entry_id).await;
    run.w1.kill();

    let mut w2 = run.next_worker("w2");
    let pid2 = w2.pid();
    let dlq = run.env.bus.dead_letters("tasks", "g").expect("dlq");
    // Worker 2 either runs it again (alone) or, if attempt 2's crash was taken for attempt 1's
    // failure, dead-letters it at once.
    until_unless_dead_lettered(
        &dlq,
        "worker 2 never took task 9",
        || async {
            read_ledgers(&run.dir.0)
                .iter()
                .any(|l| l.kind == "start" && l.n == 9 && l.pid == pid2)
        },
        |d| {
            format!(
                "attempt 2's crash was not recognised (record while it ran: {rec1:?}): \
                 dead-lettered by worker 2 with reason {}, attempts {}, stale error {:?}",
                d.reason, d.attempts, d.error
            )
        },
    )
    .await;
    let rec2 = record_of(&run.env.bus, &run.rkey, &run.entry.entry_id).await;
    assert!(
        rec2.as_deref().is_some_and(|r| r.starts_with("2|s|")),
        "the suspect must run alone (record 2|s|…): {rec2:?}"
    );
    w2.kill();

    let _w3 = run.next_worker("w3");
    eventually(T, "the dead letter", || async {
        dlq.count().await.expect("n") == 1 && pending(&run.env.bus, "tasks", "g").await == 0
    })
    .await;
    let d = &dlq.list(1).await.expect("list")[0];
    assert_eq!(d.reason, "max_attempts");
    assert_eq!(d.attempts, 2);
    assert!(
        d.error != "planned failure 1" && d.error.contains("no outcome"),
        "the dead letter must say the last attempt ended without an outcome: {:?}",
        d.error
    );
    assert!(!read_ledgers(&run.dir.0).iter().any(|l| l.kind == "done"));
    assert!(record_of(&run.env.bus, &run.rkey, &run.entry.entry_id)
        .await
        .is_none());
}

/// As in the zombie test above, but worker B shuts down gracefully right after the zombie's
/// acknowledgement, before its next lease renewal (B's visibility timeout is 60 s): the release at
/// shutdown removes the record of an entry nobody has pending any more, and the zombie's ack
/// (its lease was lost) deletes the record as well. No record is left without its entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_success_then_a_graceful_shutdown_leaves_no_orphan_attempt_record() {
    let ZombieSuccess {
        env,
        rkey,
        release_a,
        a,
        b,
        ..
    } = zombie_success(
        "zombiestop",
        SubscriberOptions::new("g").visibility_timeout(Duration::from_millis(400)),
        SubscriberOptions::new("g").visibility_timeout(Duration::from_secs(60)),
    )
    .await;
    release_a.notify_one();
    eventually(T, "the zombie's ack", || async {
        pending(&env.bus, "held", "g").await == 0
    })
    .await;
    b.shutdown().await.expect("shutdown b");
    a.shutdown().await.expect("shutdown a");
    let left = records(&env.bus, &rkey).await;
    assert!(
        left.is_empty(),
        "an orphan attempt record (no TTL) outlived the acknowledged entry: {left:?}"
    );
}

// ---- tests of options the old worker core does not have (handler_timeout, max_held) ----
mod new_options {
    use super::*;

    /// Hole 2 with a handler timeout: event 0's handler hangs on every attempt, a suspect left by
    /// a dead consumer waits to run alone, and new events arrive afterwards. The hung attempts are
    /// abandoned after 500 ms: the suspect then runs alone, the new events are handled, and the
    /// hung event is dead-lettered with reason `timeout` after its 2 attempts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_handler_timeout_a_hung_handler_does_not_freeze_the_subscriber() {
        let HungBesideSuspect {
            env, hung, rec, w, ..
        } = hung_handler_beside_a_waiting_suspect(
            "hungtimeout",
            SubscriberOptions::new("g")
                .max_attempts(2)
                .handler_timeout(Duration::from_millis(500))
                .backoff_min(Duration::from_millis(50))
                .backoff_max(Duration::from_millis(100)),
            "event 0 to hang",
        )
        .await;
        let dlq = env.bus.dead_letters("held", "g").expect("dlq");
        rec.wait_for(T, "the new events and the suspect", |s| {
            (1..=10)
                .chain([1000])
                .all(|n| s.contains_key(&format!("done {n}")))
        })
        .await;
        eventually(
            T,
            "the hung event dead-lettered, nothing pending",
            || async {
                dlq.count().await.expect("n") == 1 && pending(&env.bus, "held", "g").await == 0
            },
        )
        .await;
        w.shutdown().await.expect("shutdown");
        let s = rec.snapshot();
        assert_eq!(
            s.get("1000@1"),
            Some(&1),
            "the suspect ran once, uncharged: {s:?}"
        );
        assert_eq!(
            s.get("suspect ran beside 0"),
            Some(&1),
            "the suspect must run alone: {s:?}"
        );
        assert_eq!(
            (s.get("0@1"), s.get("0@2"), s.get("0@3")),
            (Some(&1), Some(&1), None),
            "the hung event: two attempts, each abandoned: {s:?}"
        );
        let d = &dlq.list(1).await.expect("list")[0];
        assert_eq!(d.entry_id, hung.entry_id);
        assert_eq!(d.reason, "timeout");
        assert_eq!(d.attempts, 2);
        assert!(d.error.contains("timed out"), "{:?}", d.error);
    }

    /// Hole 5 with an explicit bound: `max_held(3)` at concurrency 2. While every attempt fails,
    /// the worker takes no more than 3 events from the stream; once the outage ends all are
    /// handled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_explicit_max_held_bounds_what_a_failing_worker_takes_from_the_stream() {
        const EVENTS: u64 = 50;
        let outage = Outage::start(
            "maxheld",
            EVENTS,
            SubscriberOptions::new("g")
                .concurrency(2)
                .max_held(3)
                .backoff_min(Duration::from_secs(2))
                .backoff_max(Duration::from_secs(2)),
        )
        .await;
        let taken = outage.taken_until_the_first_retry().await;
        assert!(taken.len() <= 3, "took {} events (bound 3)", taken.len());
        let held = consumer_pending(&outage.env.bus, "held", &outage.me).await;
        assert!(held <= 3, "{held} pending for the consumer (bound 3)");
        let lag = group_field(&outage.env.bus, "held", "lag").await;
        assert!(lag.is_some_and(|l| l >= EVENTS - 3), "lag {lag:?}");
        outage.end(T, "all events handled").await;
    }

    /// An attempt running past the handler timeout is abandoned (its future dropped, it never
    /// finishes) and retried; the retry succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_past_the_handler_timeout_is_abandoned_and_retried() {
        let env = TestEnv::new("timeoutretry").await;
        let rec = Recorder::new();
        // Attempt 1 runs far longer than the test waits: only abandonment ends it.
        let w = start_timing_out_worker(&env, &rec, |a| a == 1).await;
        env.bus.publish(&Work { n: 1 }).await.expect("publish");
        rec.wait_for(T, "attempt 2 to finish", |s| s.contains_key("finished 2"))
            .await;
        eventually(T, "the ack", || async {
            pending(&env.bus, "held", "g").await == 0
        })
        .await;
        w.shutdown().await.expect("shutdown");
        let s = rec.snapshot();
        assert_eq!(s.get("dropped 1"), Some(&1), "attempt 1 abandoned: {s:?}");
        assert!(!s.contains_key("finished 1"), "{s:?}");
        assert!(!s.contains_key("start 3"), "{s:?}");
        assert_eq!(dead_letter_count(&env.bus, "held", "g").await, 0);
        assert!(records(&env.bus, &records_key(&env, "held"))
            .await
            .is_empty());
    }

    /// When the last attempt runs past the handler timeout, the entry is dead-lettered with
    /// reason `timeout` (not `max_attempts`), after exactly max_attempts abandoned attempts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_attempt_timing_out_is_dead_lettered_with_reason_timeout() {
        let env = TestEnv::new("timeoutdead").await;
        let rec = Recorder::new();
        let w = start_timing_out_worker(&env, &rec, |_| true).await;
        let p = env.bus.publish(&Work { n: 1 }).await.expect("publish");
        let dlq = env.bus.dead_letters("held", "g").expect("dlq");
        eventually(T, "the dead letter", || async {
            dlq.count().await.expect("n") == 1 && pending(&env.bus, "held", "g").await == 0
        })
        .await;
        w.shutdown().await.expect("shutdown");
        let d = &dlq.list(1).await.expect("list")[0];
        assert_eq!(d.entry_id, p.entry_id);
        assert_eq!(d.reason, "timeout");
        assert_eq!(d.attempts, 3);
        assert!(d.error.contains("timed out"), "{:?}", d.error);
        let s = rec.snapshot();
        for a in 1..=3 {
            assert_eq!(s.get(&format!("start {a}")), Some(&1), "{s:?}");
            assert_eq!(s.get(&format!("dropped {a}")), Some(&1), "{s:?}");
        }
        assert!(!s.keys().any(|k| k.starts_with("finished")), "{s:?}");
        assert!(!s.contains_key("start 4"), "{s:?}");
        assert!(records(&env.bus, &records_key(&env, "held"))
            .await
            .is_empty());
    }
}
