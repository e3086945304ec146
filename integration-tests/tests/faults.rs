//! Network and server faults at the worst moments of an entry's life, against an own
//! `redis-server` (and the fault proxy where a reply must be lost):
//!
//! - entries the scanner claimed while the connection broke right after the claim are handled
//!   (not held forever without a task);
//! - a take whose reply was lost, or that was stalled past the command timeout, and so was sent
//!   twice, counts one attempt, not two (no event dead-lettered without its last run);
//! - reads never orphan deliveries: a blocking read longer than the command timeout, and a read
//!   whose reply was lost with its connection, burn no attempt.
//!
//! The fault durations below (a refused reconnect, a SIGSTOP) are part of each scenario, not
//! synchronisation: every outcome is awaited with a bounded timeout.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Job;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_core::{
    subscriber_fn, Bus, DeadLetter, HandlerError, Subscriber, SubscriberOptions, WorkerHandle,
};
use fred::prelude::*;
use integration_tests::support::{
    attempt_records_key, create_group, read_as, start_worker, OwnRedis,
};
use integration_tests::TestEnv;
use tokio::sync::Semaphore;

const STREAM: &str = "jobs";
const GROUP: &str = "g";
/// Bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);
/// Bound on every event of a scenario being settled.
const SETTLE: Duration = Duration::from_secs(20);

/// Every handler run: event number → `(attempt, succeeded)` in order.
type RunLog = BTreeMap<u64, Vec<(u32, bool)>>;

#[derive(Clone, Default)]
struct Runs(Arc<Mutex<RunLog>>);

impl Runs {
    fn record(&self, n: u64, attempt: u32, ok: bool) {
        self.0
            .lock()
            .expect("lock")
            .entry(n)
            .or_default()
            .push((attempt, ok));
    }

    fn snapshot(&self) -> RunLog {
        self.0.lock().expect("lock").clone()
    }

    fn attempts(&self, n: u64) -> Vec<u32> {
        self.snapshot()
            .get(&n)
            .map(|r| r.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }

    fn succeeded(&self, n: u64) -> bool {
        self.snapshot()
            .get(&n)
            .is_some_and(|r| r.iter().any(|(_, ok)| *ok))
    }

    /// Waits until each of `ns` has started a run; panics with `never` after `PROMPT`.
    async fn wait_started(&self, ns: &[u64], never: &str) {
        let deadline = Instant::now() + PROMPT;
        while ns.iter().any(|n| self.attempts(*n).is_empty()) {
            assert!(Instant::now() < deadline, "{never}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Entries of the stream pending for the group (`u64::MAX` when Redis does not answer).
async fn pending(bus: &Bus) -> u64 {
    integration_tests::pending_count(bus, STREAM, GROUP)
        .await
        .unwrap_or(u64::MAX)
}

async fn dead_letters(bus: &Bus) -> Vec<DeadLetter> {
    bus.dead_letters(STREAM, GROUP)
        .expect("dlq")
        .list(1000)
        .await
        .expect("list dead letters")
}

async fn records(bus: &Bus, prefix: &str) -> u64 {
    bus.redis()
        .hlen(attempt_records_key(prefix, STREAM, GROUP).as_str())
        .await
        .expect("HLEN")
}

/// Waits until each of `ns` either succeeded or was dead-lettered and nothing is pending; returns
/// the dead letters. Panics with what it saw after `SETTLE`.
async fn settle(bus: &Bus, runs: &Runs, ns: &[u64], what: &str) -> Vec<DeadLetter> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let done = ns.iter().filter(|n| runs.succeeded(**n)).count();
        let dead = dead_letters(bus).await;
        let left = pending(bus).await;
        if done + dead.len() >= ns.len() && left == 0 {
            return dead;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {SETTLE:?} waiting for {what}: {done}/{} succeeded, {} dead-lettered \
                 {:?}, {left} pending; runs (attempt, ok) per event: {:?}",
                ns.len(),
                dead.len(),
                explain(&dead),
                runs.snapshot()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a scenario expects once its events settled.
struct Expect<'a> {
    /// The events (see [`settle`]) and what to call them in a timeout message.
    ns: &'a [u64],
    what: &'a str,
    /// The attempt numbers each event ran with.
    attempts: &'a [u32],
    /// What a dead letter would mean.
    dead_lettered: &'a str,
}

/// Event 1 retried once: its attempts 1 and 2 ran, and it was not dead-lettered.
const EVENT_1_RETRIED: Expect<'static> = Expect {
    ns: &[1],
    what: "the second attempt",
    attempts: &[1, 2],
    dead_lettered: "dead-lettered without its second run",
};

/// As [`settle`], then shuts `w` down and checks `expect`.
async fn settle_and_stop(bus: &Bus, runs: &Runs, w: WorkerHandle, expect: Expect<'_>) {
    let dead = settle(bus, runs, expect.ns, expect.what).await;
    w.shutdown().await.expect("shutdown");
    assert!(
        dead.is_empty(),
        "{}: {:?}; runs {:?}",
        expect.dead_lettered,
        explain(&dead),
        runs.snapshot()
    );
    for n in expect.ns {
        assert_eq!(runs.attempts(*n), expect.attempts, "{:?}", runs.snapshot());
    }
}

fn explain(dead: &[DeadLetter]) -> Vec<String> {
    dead.iter()
        .map(|d| {
            format!(
                "{} reason={} attempts={} error={:?}",
                d.entry_id, d.reason, d.attempts, d.error
            )
        })
        .collect()
}

/// Publishes `n` and waits until its first attempt failed and its second succeeded (the scripts
/// of the retry path are then loaded in the server's script cache, as in any running system), and
/// its record is gone.
async fn warm_up(bus: &Bus, prefix: &str, runs: &Runs, n: u64) {
    bus.publish(&Job { n }).await.expect("publish");
    let deadline = Instant::now() + SETTLE;
    while !(runs.succeeded(n) && pending(bus).await == 0 && records(bus, prefix).await == 0) {
        assert!(
            Instant::now() < deadline,
            "warm-up event {n} not handled: runs {:?}, dead letters {:?}",
            runs.snapshot(),
            explain(&dead_letters(bus).await)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs.attempts(n), vec![1, 2], "warm-up");
}

/// Options for events retried once, `backoff` after their first attempt (`max_attempts = 2`).
fn one_retry_after(backoff: Duration) -> SubscriberOptions {
    SubscriberOptions::new(GROUP)
        .max_attempts(2)
        .backoff_min(backoff)
        .backoff_max(backoff)
}

/// Starts a worker on `worker_bus` with `opts` whose handler fails every event's first attempt
/// and succeeds after, and warms it up with event 0 (see [`warm_up`]).
async fn start_warm_retrying_worker(
    direct: &Bus,
    worker_bus: &Bus,
    prefix: &str,
    opts: SubscriberOptions,
) -> (Runs, WorkerHandle) {
    let runs = Runs::default();
    let w = start_worker(worker_bus, fail_first_attempt(opts, &runs)).await;
    warm_up(direct, prefix, &runs, 0).await;
    (runs, w)
}

/// A handler that records every run and succeeds.
fn record_all(opts: SubscriberOptions, runs: &Runs) -> impl Subscriber {
    let runs = runs.clone();
    subscriber_fn(opts, move |j: Job, ctx| {
        let runs = runs.clone();
        async move {
            runs.record(j.n, ctx.attempt(), true);
            Ok::<_, HandlerError>(())
        }
    })
}

/// A handler that records the start (not succeeded) and the end (succeeded) of every run, and
/// succeeds. The first run of event `n < gates.len()` waits in between for a permit of `gates[n]`.
fn gated(opts: SubscriberOptions, runs: &Runs, gates: Vec<Arc<Semaphore>>) -> impl Subscriber {
    let runs = runs.clone();
    subscriber_fn(opts, move |j: Job, ctx| {
        let (runs, gates) = (runs.clone(), gates.clone());
        async move {
            let first_run = runs.attempts(j.n).is_empty();
            runs.record(j.n, ctx.attempt(), false);
            if let (true, Some(g)) = (first_run, gates.get(j.n as usize)) {
                let _ = g.acquire().await.expect("gate");
            }
            runs.record(j.n, ctx.attempt(), true);
            Ok::<_, HandlerError>(())
        }
    })
}

/// A handler that fails every event's first attempt and succeeds after.
fn fail_first_attempt(opts: SubscriberOptions, runs: &Runs) -> impl Subscriber {
    let runs = runs.clone();
    subscriber_fn(opts, move |j: Job, ctx| {
        let runs = runs.clone();
        async move {
            let ok = ctx.attempt() > 1;
            runs.record(j.n, ctx.attempt(), ok);
            if ok {
                Ok(())
            } else {
                Err(HandlerError::retry(format!(
                    "attempt {} of event {} fails",
                    ctx.attempt(),
                    j.n
                )))
            }
        }
    })
}

/// Hole: the old scanner marked claimed entries held, then read their records (HGET/HMGET) and
/// Redis's clock (TIME); when one of those failed, the entries stayed held forever with no task:
/// lease-renewed, never run, never reclaimed. Here the first command carrying a claimed entry's
/// id (whatever it is) loses its reply with the connection, and reconnecting is refused for longer
/// than the command timeout, so that command fails. Every entry must still be handled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_claimed_by_the_scanner_are_handled_when_the_connection_breaks_right_after_the_claim(
) {
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
    const VT: Duration = Duration::from_secs(1);
    let Some(redis) = OwnRedis::start_or_skip("faults-claim") else {
        return;
    };
    let proxy = redis.proxy();
    let direct = redis.bus(Some(PROMPT)).await;
    create_group(&direct, STREAM, GROUP).await;
    let mut ids = Vec::new();
    let ns: Vec<u64> = (0..5).collect();
    for n in &ns {
        ids.push(
            direct
                .publish(&Job { n: *n })
                .await
                .expect("publish")
                .entry_id,
        );
    }
    // A consumer that received them and died: they come back through the scanner only.
    read_as(&direct, STREAM, GROUP, "dead", 10).await;
    assert_eq!(pending(&direct).await, 5);

    // Armed before the worker exists: nothing but the claim path sends an entry id.
    let fault = proxy.lose_reply_after(ids[0].as_bytes());
    let worker_bus = redis.bus_via(&proxy, Some(COMMAND_TIMEOUT)).await;
    let runs = Runs::default();
    // Reads block for less than the command timeout (a longer block is another hole, below).
    let opts = SubscriberOptions::new(GROUP)
        .visibility_timeout(VT)
        .block_timeout(Duration::from_millis(500));
    let w = start_worker(&worker_bus, record_all(opts, &runs)).await;
    // The worker's connections are up; a broken one cannot come back while this holds.
    proxy.refuse(true);
    assert!(
        !fault.fired(),
        "setup: the entries were claimed before reconnects were refused"
    );
    assert!(
        fault.wait_fired(PROMPT + VT).await,
        "no command carrying a claimed entry's id was sent"
    );
    // The command whose reply was lost, and whatever else was on that connection, fail with the
    // command timeout while the connection cannot come back.
    tokio::time::sleep(COMMAND_TIMEOUT * 3).await;
    proxy.refuse(false);

    let dead = settle(&direct, &runs, &ns, "the claimed entries").await;
    w.shutdown().await.expect("shutdown");
    assert!(dead.is_empty(), "dead-lettered: {:?}", explain(&dead));
    for n in &ns {
        assert_eq!(
            runs.attempts(*n),
            vec![1],
            "event {n}: {:?}",
            runs.snapshot()
        );
    }
}

/// Hole: a take whose reply is lost with its connection is re-sent (by the client after the
/// reconnect, or by the script retry); the old take counted a delivery each time, so with
/// `max_attempts = 2` the event was dead-lettered without running its second attempt. The take of
/// the second attempt loses its reply here (matched by the dead-letter stream key, which only the
/// take and dead-letter scripts carry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_whose_reply_is_lost_counts_one_attempt_not_two() {
    let Some(redis) = OwnRedis::start_or_skip("faults-lost-take") else {
        return;
    };
    let proxy = redis.proxy();
    let direct = redis.bus(Some(PROMPT)).await;
    let worker_bus = redis.bus_via(&proxy, Some(Duration::from_secs(5))).await;
    let opts = one_retry_after(Duration::from_millis(200));
    let (runs, w) = start_warm_retrying_worker(&direct, &worker_bus, &redis.prefix, opts).await;

    let dlq_key = direct.dead_letter_key(STREAM, GROUP).expect("dlq key");
    let fault = proxy.lose_reply_after(dlq_key.as_bytes());
    direct.publish(&Job { n: 1 }).await.expect("publish");
    assert!(
        fault.wait_fired(PROMPT).await,
        "the take of the second attempt was never sent"
    );
    settle_and_stop(&direct, &runs, w, EVENT_1_RETRIED).await;
}

/// Holds until every id in `n` retry records exist, then stalls Redis for `stall` (the takes of
/// the retries, due meanwhile, are sent into the stall), and resumes it.
async fn stall_while_retries_are_due(redis: &OwnRedis, direct: &Bus, n: u64, stall: Duration) {
    let deadline = Instant::now() + PROMPT;
    while records(direct, &redis.prefix).await < n {
        assert!(Instant::now() < deadline, "the retries were never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.server.pause().expect("SIGSTOP");
    tokio::time::sleep(stall).await;
    redis.server.resume().expect("SIGCONT");
}

/// Hole: a take that times out on the client while Redis is stalled is re-sent; after the stall
/// Redis runs both. The old take counted two deliveries: dead-lettered without its second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_stalled_past_the_command_timeout_counts_one_attempt_not_two() {
    const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
    const BACKOFF: Duration = Duration::from_secs(1);
    let Some(redis) = OwnRedis::start_or_skip("faults-stalled-take") else {
        return;
    };
    let direct = redis.bus(Some(PROMPT)).await;
    let worker_bus = redis.bus(Some(COMMAND_TIMEOUT)).await;
    let opts = one_retry_after(BACKOFF).block_timeout(Duration::from_millis(500));
    let (runs, w) = start_warm_retrying_worker(&direct, &worker_bus, &redis.prefix, opts).await;

    direct.publish(&Job { n: 1 }).await.expect("publish");
    // The take is sent a second after the record, into the stall, and times out (and is re-sent)
    // more than once before Redis answers again.
    stall_while_retries_are_due(&redis, &direct, 1, BACKOFF + COMMAND_TIMEOUT * 3).await;
    settle_and_stop(&direct, &runs, w, EVENT_1_RETRIED).await;
}

/// The scenario: Redis SIGSTOPped for 12 s with the default timeouts while several
/// events wait for their second attempt. No attempt is skipped, nothing is dead-lettered early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twelve_second_redis_stall_with_default_timeouts_skips_no_attempt() {
    let Some(redis) = OwnRedis::start_or_skip("faults-sigstop") else {
        return;
    };
    let direct = redis.bus(Some(Duration::from_secs(30))).await;
    // Default command timeout (10 s).
    let worker_bus = redis.bus(None).await;
    let opts = one_retry_after(Duration::from_secs(1));
    let (runs, w) = start_warm_retrying_worker(&direct, &worker_bus, &redis.prefix, opts).await;

    let ns: Vec<u64> = (1..=6).collect();
    for n in &ns {
        direct.publish(&Job { n: *n }).await.expect("publish");
    }
    stall_while_retries_are_due(&redis, &direct, 6, Duration::from_secs(12)).await;
    let expect = Expect {
        ns: &ns,
        what: "every second attempt after the stall",
        attempts: &[1, 2],
        dead_lettered: "dead-lettered early",
    };
    settle_and_stop(&direct, &runs, w, expect).await;
}

/// Hole: with a blocking read longer than the command timeout, the old reader timed out on the
/// client while Redis still blocked; entries published then were delivered to that abandoned read
/// and came back through the scanner as attempt 2 (with `max_attempts = 1`: dead-lettered
/// without running. Events published while the worker idles in a blocked read, after it has
/// waited longer than the command timeout (and less than the block timeout), each run once, as
/// attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reads_longer_than_the_command_timeout_orphan_no_delivery() {
    let env = TestEnv::with_builder("faults-block", |b| {
        b.command_timeout(Duration::from_secs(1))
    })
    .await;
    let runs = Runs::default();
    let opts = SubscriberOptions::new(GROUP)
        .max_attempts(1)
        .visibility_timeout(Duration::from_secs(1))
        .block_timeout(Duration::from_secs(3));
    let w = start_worker(&env.bus, record_all(opts, &runs)).await;
    let ns: Vec<u64> = (0..6).collect();
    for pair in ns.chunks(2) {
        // The scenario, not synchronisation: the worker idles in its blocking read for 2 s, past
        // the 1 s command timeout and 1 s before the read's 3 s end, then two events come.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for n in pair {
            env.bus.publish(&Job { n: *n }).await.expect("publish");
        }
    }
    let expect = Expect {
        ns: &ns,
        what: "the events published during blocked reads",
        attempts: &[1],
        dead_lettered: "deliveries orphaned by timed-out reads were dead-lettered",
    };
    settle_and_stop(&env.bus, &runs, w, expect).await;
}

/// Hole: a read whose reply is lost with its connection has delivered its entries to this
/// consumer in Redis. The old worker left them to the scanner, which counted that delivery as an
/// attempt: with `max_attempts = 1` they were dead-lettered without running. Here the worker
/// (one slot) is busy with a first event while five more are published, so its next read, which
/// gets all five, is the one that loses its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_reply_is_lost_burns_no_attempt() {
    let Some(redis) = OwnRedis::start_or_skip("faults-lost-read") else {
        return;
    };
    let proxy = redis.proxy();
    let direct = redis.bus(Some(PROMPT)).await;
    let worker_bus = redis.bus_via(&proxy, Some(Duration::from_secs(5))).await;
    let runs = Runs::default();
    // The first event holds the only slot until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let opts = SubscriberOptions::new(GROUP)
        .max_attempts(1)
        .concurrency(1)
        .prefetch(10)
        .visibility_timeout(Duration::from_secs(1))
        .block_timeout(Duration::from_millis(500));
    let w = start_worker(&worker_bus, gated(opts, &runs, vec![gate.clone()])).await;
    direct.publish(&Job { n: 0 }).await.expect("publish");
    runs.wait_started(&[0], "the first event never ran").await;
    // The reader waits for the slot: no read until the first event is done.
    let ns: Vec<u64> = (0..6).collect();
    for n in &ns[1..] {
        direct.publish(&Job { n: *n }).await.expect("publish");
    }
    let fault = proxy.lose_reply_after(b"XREADGROUP");
    gate.add_permits(1);
    assert!(
        fault.wait_fired(PROMPT).await,
        "the read after the first event was never sent"
    );
    let expect = Expect {
        ns: &ns,
        what: "the entries of the lost read",
        // Recorded at the start and at the end of the one run.
        attempts: &[1, 1],
        dead_lettered: "entries of a lost read were dead-lettered",
    };
    settle_and_stop(&direct, &runs, w, expect).await;
}

/// After a failed read, the read loop takes this consumer's unheld once-delivered entries as lost
/// deliveries; an entry whose handler succeeded but whose `XACK` is still queued (the acker
/// retrying through a stall) must not be among them, or it runs twice. Four events run (held by
/// gates); Redis is SIGSTOPped; event 0 finishes (its `XACK` times out and is retried with growing
/// pauses), then 1–3 finish (their acks wait behind 0's batch); the reads fail meanwhile; an event
/// published during the stall makes the first read after it return at once. The stall length puts
/// the resume inside the acker's pause after its 6th failed try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_entries_whose_ack_is_queued_are_not_run_again_after_a_failed_read() {
    let Some(redis) = OwnRedis::start_or_skip("faults-queued-ack") else {
        return;
    };
    let direct = redis.bus(Some(Duration::from_secs(30))).await;
    let worker_bus = redis.bus(Some(Duration::from_secs(1))).await;
    let runs = Runs::default();
    let gates: Vec<Arc<Semaphore>> = (0..4).map(|_| Arc::new(Semaphore::new(0))).collect();
    let opts = SubscriberOptions::new(GROUP)
        .concurrency(8)
        .block_timeout(Duration::from_millis(500));
    let w = start_worker(&worker_bus, gated(opts, &runs, gates.clone())).await;
    for n in 0..4 {
        direct.publish(&Job { n }).await.expect("publish");
    }
    runs.wait_started(&[0, 1, 2, 3], "the four events never started")
        .await;
    redis.server.pause().expect("SIGSTOP");
    let paused = Instant::now();
    gates[0].add_permits(1);
    while !runs.succeeded(0) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Pacing: the acker takes event 0's ack alone into its first batch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for g in &gates[1..] {
        g.add_permits(1);
    }
    while !(1..4).all(|n| runs.succeeded(n)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Lands when Redis resumes, so the first read after the stall answers at once.
    let d2 = direct.clone();
    let trigger = tokio::spawn(async move { d2.publish(&Job { n: 100 }).await });
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(paused.elapsed())).await;
    redis.server.resume().expect("SIGCONT");
    trigger.await.expect("join").expect("publish");
    let ns = [0, 1, 2, 3, 100];
    let dead = settle(&direct, &runs, &ns, "every event").await;
    // Second runs, if any, start right after the stall; give them time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.shutdown().await.expect("shutdown");
    assert!(dead.is_empty(), "{:?}", explain(&dead));
    let twice: Vec<u64> = ns
        .iter()
        .copied()
        .filter(|n| runs.attempts(*n).len() > 2)
        .collect();
    assert!(
        twice.is_empty(),
        "events that had succeeded ran again: {twice:?}; runs (attempt, finished) {:?}",
        runs.snapshot()
    );
}
