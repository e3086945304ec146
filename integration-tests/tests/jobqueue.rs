//! Job-queue capabilities: delayed and scheduled publish (with competing movers that get killed),
//! de-duplicated publish.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Job;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bus_core::{subscriber_fn, PublishOptions, SubscriberOptions};
use fred::prelude::*;
use integration_tests::procs::{Task, TempDir, WorkerArgs, WorkerProc};
use integration_tests::{eventually, Recorder, TestEnv};

const T: Duration = Duration::from_secs(30);

async fn redis_ms(env: &TestEnv) -> u64 {
    integration_tests::support::redis_now_ms(&env.bus).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_are_handled_when_due_and_not_before() {
    let env = TestEnv::new("delayed").await;
    let rec = Recorder::new();
    let rc = rec.clone();
    let before = redis_ms(&env).await;
    let scheduled = Instant::now();
    let s = env
        .bus
        .publish_after(&Job { n: 1 }, Duration::from_millis(700))
        .await
        .expect("after");
    assert!(
        s.due_ms >= before + 700 && s.due_ms < before + 1500,
        "due {} vs now {before}",
        s.due_ms
    );
    let past = env
        .bus
        .publish_at(&Job { n: 2 }, SystemTime::now() - Duration::from_secs(5))
        .await
        .expect("at");
    assert!(past.due_ms < before);
    // Nothing moves them before a worker of the stream runs.
    assert_eq!(env.bus.delayed_count("jobs").await.expect("count"), 2);
    let w = env
        .bus
        .worker()
        .move_delayed_every(Duration::from_millis(50))
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g"),
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

    rec.wait_for(T, "the past-due event", |s| s.contains_key("2"))
        .await;
    assert!(
        !rec.snapshot().contains_key("1"),
        "the delayed event came early"
    );
    rec.wait_for(T, "the delayed event", |s| s.contains_key("1"))
        .await;
    let waited = scheduled.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "handled after {waited:?}"
    );
    assert_eq!(env.bus.delayed_count("jobs").await.expect("count"), 0);
    w.shutdown().await.expect("shutdown");
    // The handler saw the producer's event id.
    assert_eq!(rec.total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_movers_that_get_killed_move_every_delayed_event_exactly_once_and_on_time() {
    let env = TestEnv::new("movers").await;
    let dir = TempDir::new("movers");
    let mut args = WorkerArgs::new(&env.url, &env.prefix, "g", &dir.ledger("m0"));
    args.mover_interval = Duration::from_millis(100);
    let mut movers = Vec::new();
    for i in 0..8 {
        args.ledger = dir.ledger(&format!("m{i}"));
        movers.push(WorkerProc::spawn(&args).expect("mover"));
    }
    // 400 events due over the next 3 s, several at the same millisecond.
    let mut due: HashMap<u64, u64> = HashMap::new();
    for n in 0..400u64 {
        let delay = Duration::from_millis(300 + (n * 7) % 2700);
        let s = env
            .bus
            .publish_after(&Task::new(n), delay)
            .await
            .expect("schedule");
        due.insert(n, s.due_ms);
    }
    // Kill two movers in the middle of it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    movers[0].kill();
    movers[5].kill();
    eventually(T, "the delayed set to empty", || async {
        env.bus.delayed_count("tasks").await.expect("count") == 0
    })
    .await;
    let key = env.bus.stream_key("tasks").expect("key");
    let entries: Vec<(String, HashMap<String, fred::bytes::Bytes>)> = env
        .bus
        .redis()
        .xrange(key.as_str(), "-", "+", None)
        .await
        .expect("XRANGE");
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut late = Vec::new();
    for (id, fields) in &entries {
        // Envelope version 2: the line `2 <id> <ms> <codec> <type>`, a line feed, the payload.
        let value = fields.get("e").expect("field e");
        let nl = value.iter().position(|b| *b == b'\n').expect("a line feed");
        let t: Task = bus_core::Codec::MessagePack
            .decode(&value[nl + 1..])
            .expect("task");
        *seen.entry(t.n).or_default() += 1;
        let at: u64 = id
            .split('-')
            .next()
            .and_then(|m| m.parse().ok())
            .expect("ms");
        let d = due[&t.n];
        assert!(
            at >= d,
            "task {} moved at {at}, before its due time {d}",
            t.n
        );
        // Within the mover interval (100 ms), with 700 ms slack for scheduling on a busy 2-core box.
        if at > d + 100 + 700 {
            late.push((t.n, at - d));
        }
    }
    assert_eq!(seen.len(), 400, "every delayed event reaches the stream");
    assert!(seen.values().all(|c| *c == 1), "an event was moved twice");
    assert!(
        late.is_empty(),
        "moved too late (task, ms after due): {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplicated_publish_writes_once_per_window() {
    let env = TestEnv::new("dedup").await;
    let opts = PublishOptions::new().dedup("order-42", Duration::from_millis(500));
    let first = env
        .bus
        .publish_with(&Job { n: 1 }, opts.clone())
        .await
        .expect("first");
    assert!(!first.duplicate);
    for _ in 0..3 {
        let again = env
            .bus
            .publish_with(&Job { n: 1 }, opts.clone())
            .await
            .expect("again");
        assert!(again.duplicate);
        assert_eq!(
            (again.event_id.as_str(), again.entry_id.as_str()),
            (first.event_id.as_str(), first.entry_id.as_str())
        );
    }
    let key = env.bus.stream_key("jobs").expect("key");
    let len: u64 = env.bus.redis().xlen(key.as_str()).await.expect("XLEN");
    assert_eq!(len, 1);
    let dedup_key = format!("{}:{{jobs}}:dedup:order-42", env.prefix);
    let ttl: i64 = env
        .bus
        .redis()
        .pttl(dedup_key.as_str())
        .await
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl <= 500,
        "the de-dup key must carry the window as TTL: {ttl}"
    );
    // Other keys are independent; after the window the same key publishes again.
    let other = env
        .bus
        .publish_with(
            &Job { n: 2 },
            PublishOptions::new().dedup("order-43", Duration::from_secs(5)),
        )
        .await
        .expect("other");
    assert!(!other.duplicate);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = env
        .bus
        .publish_with(&Job { n: 1 }, opts)
        .await
        .expect("later");
    assert!(!later.duplicate);
    assert_ne!(later.event_id, first.event_id);
    let len: u64 = env.bus.redis().xlen(key.as_str()).await.expect("XLEN");
    assert_eq!(len, 3);
}

async fn xlen(env: &TestEnv, stream: &str) -> u64 {
    let key = env.bus.stream_key(stream).expect("key");
    env.bus.redis().xlen(key.as_str()).await.expect("XLEN")
}

fn job_recorder(group: &str, rec: &Recorder) -> impl bus_core::Subscriber<Event = Job> {
    let rec = rec.clone();
    subscriber_fn(SubscriberOptions::new(group), move |j: Job, _| {
        let rec = rec.clone();
        async move {
            rec.record(j.n.to_string());
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_never_removes_what_a_lagging_group_still_needs() {
    let env = TestEnv::new("trimlag").await;
    let (fast, slow) = (Recorder::new(), Recorder::new());
    // The slow group reads 50 events, then its worker goes away.
    let events: Vec<Job> = (0..50).map(|n| Job { n }).collect();
    env.bus.publish_batch(&events).await.expect("publish");
    let s = env
        .bus
        .worker()
        .trim_every(None)
        .subscribe(job_recorder("slow", &slow))
        .start()
        .await
        .expect("slow");
    slow.wait_for(T, "50 events", |m| m.len() == 50).await;
    s.shutdown().await.expect("shutdown");
    let events: Vec<Job> = (50..200).map(|n| Job { n }).collect();
    env.bus.publish_batch(&events).await.expect("publish");
    let f = env
        .bus
        .worker()
        .trim_every(Some(Duration::from_millis(50)))
        .subscribe(job_recorder("fast", &fast))
        .start()
        .await
        .expect("fast");
    fast.wait_for(T, "all 200", |m| m.len() == 200).await;
    // The fast group has acknowledged everything; the trimmer may drop only what slow has too.
    eventually(T, "the trim to the slow group's position", || async {
        xlen(&env, "jobs").await == 150
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        xlen(&env, "jobs").await,
        150,
        "trimmed past the lagging group"
    );
    f.shutdown().await.expect("shutdown");
    // The lagging group catches up with nothing lost.
    let s = env
        .bus
        .worker()
        .trim_every(None)
        .subscribe(job_recorder("slow", &slow))
        .start()
        .await
        .expect("slow");
    slow.wait_for(T, "the other 150", |m| m.len() == 200).await;
    s.shutdown().await.expect("shutdown");
    assert_eq!(slow.total(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_groups_keep_up_stays_bounded_with_optional_retention() {
    let env = TestEnv::new("trimbound").await;
    let (a, b) = (Recorder::new(), Recorder::new());
    let w = env
        .bus
        .worker()
        .trim_every(Some(Duration::from_millis(50)))
        .retention(bus_core::Retention::new().min_count(25))
        .subscribe(job_recorder("a", &a))
        .subscribe(job_recorder("b", &b))
        .start()
        .await
        .expect("start");
    // Each round adds 100 entries; once both groups have acknowledged them, the trimmer brings
    // the stream back to the 25 retained entries: it never grows round after round.
    for round in 0..10u64 {
        let events: Vec<Job> = (round * 100..round * 100 + 100)
            .map(|n| Job { n })
            .collect();
        env.bus.publish_batch(&events).await.expect("publish");
        let want = (round as usize + 1) * 100;
        a.wait_for(T, "group a", |m| m.len() == want).await;
        b.wait_for(T, "group b", |m| m.len() == want).await;
        eventually(T, "the trim down to the retained 25", || async {
            xlen(&env, "jobs").await == 25
        })
        .await;
    }
    w.shutdown().await.expect("shutdown");
    // With no groups at all nothing is trimmed (nobody has consumed anything).
    let removed = env
        .bus
        .trim("empty", bus_core::Retention::default())
        .await
        .expect("trim");
    assert_eq!(removed, 0);
}

fn tracked(group: &str) -> impl bus_core::Subscriber<Event = Job> {
    subscriber_fn(
        SubscriberOptions::new(group)
            .track_status(true)
            .max_attempts(2)
            .backoff_min(Duration::from_millis(20)),
        |j: Job, ctx| async move {
            match j.n {
                3 => Err(bus_core::HandlerError::reject("three is not allowed")),
                5 if ctx.attempt() == 1 => Err(bus_core::HandlerError::retry("flaky")),
                7 => Err(bus_core::HandlerError::retry("always")),
                n => Ok(n * 2),
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_results_and_completion_waiting() {
    use bus_core::State;
    let env = TestEnv::new("status").await;
    let w = env.start(tracked("g")).await;
    let ok = env.bus.publish(&Job { n: 4 }).await.expect("publish");
    let st = env
        .bus
        .wait_for::<Job>(&ok.event_id, "g", T)
        .await
        .expect("wait");
    assert_eq!(st.state, State::Succeeded);
    assert_eq!(st.attempts, 1);
    assert_eq!(st.result::<u64>().expect("decode"), Some(8));

    let rejected = env.bus.publish(&Job { n: 3 }).await.expect("publish");
    let st = env
        .bus
        .wait_for::<Job>(&rejected.event_id, "g", T)
        .await
        .expect("wait");
    assert_eq!(st.state, State::Dead);
    assert_eq!(st.error.as_deref(), Some("three is not allowed"));

    let flaky = env.bus.publish(&Job { n: 5 }).await.expect("publish");
    let st = env
        .bus
        .wait_for::<Job>(&flaky.event_id, "g", T)
        .await
        .expect("wait");
    assert_eq!((st.state, st.attempts), (State::Succeeded, 2));
    assert_eq!(st.error.as_deref(), Some("flaky"), "the last error is kept");

    let doomed = env.bus.publish(&Job { n: 7 }).await.expect("publish");
    let st = env
        .bus
        .wait_for::<Job>(&doomed.event_id, "g", T)
        .await
        .expect("wait");
    assert_eq!((st.state, st.attempts), (State::Dead, 2));

    // request = publish + wait for the group's result.
    let doubled: u64 = env
        .bus
        .request(&Job { n: 21 }, "g", T)
        .await
        .expect("request");
    assert_eq!(doubled, 42);
    let failed = env.bus.request::<Job, u64>(&Job { n: 3 }, "g", T).await;
    assert!(
        matches!(failed, Err(bus_core::Error::Failed { .. })),
        "{failed:?}"
    );

    // Every status record carries a TTL (24 h after completion by default).
    let key = format!("{}:{{jobs}}:status:{}", env.prefix, ok.event_id);
    let ttl: i64 = env.bus.redis().pttl(key.as_str()).await.expect("PTTL");
    assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "ttl {ttl}");
    let all = env.bus.status::<Job>(&ok.event_id).await.expect("status");
    assert_eq!(all.len(), 1);
    w.shutdown().await.expect("shutdown");

    // Nobody handles it: the waiter gives up at its timeout instead of hanging.
    let lonely = env.bus.publish(&Job { n: 9 }).await.expect("publish");
    let started = Instant::now();
    let r = env
        .bus
        .wait_for::<Job>(&lonely.event_id, "g", Duration::from_millis(700))
        .await;
    assert!(matches!(r, Err(bus_core::Error::Timeout(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        env.bus
            .group_status::<Job>(&lonely.event_id, "nobody")
            .await
            .expect("st")
            .state,
        State::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_does_not_hang_when_the_completion_notification_is_lost() {
    let env = TestEnv::new("lostnote").await;
    let p = env.bus.publish(&Job { n: 1 }).await.expect("publish");
    let key = format!("{}:{{jobs}}:status:{}", env.prefix, p.event_id);
    let bus = env.bus.clone();
    let id = p.event_id.clone();
    let waiter =
        tokio::spawn(async move { bus.wait_for::<Job>(&id, "g", Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Complete it the way a worker would, but with the PUBLISH lost.
    let _: i64 = env
        .bus
        .redis()
        .hset(
            key.as_str(),
            vec![("g:state", "succeeded"), ("g:attempts", "1")],
        )
        .await
        .expect("HSET");
    let _: bool = env
        .bus
        .redis()
        .pexpire(key.as_str(), 60_000, None)
        .await
        .expect("PEXPIRE");
    let started = Instant::now();
    let st = waiter.await.expect("join").expect("wait");
    assert_eq!(st.state, bus_core::State::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the waiter took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_a_stream_a_known_set_or_expires() {
    let env = TestEnv::new("hygiene").await;
    let w = env
        .bus
        .worker()
        .move_delayed_every(Duration::from_millis(50))
        .trim_every(Some(Duration::from_millis(100)))
        .subscribe(tracked("g"))
        .subscribe(job_recorder("plain", &Recorder::new()))
        .start()
        .await
        .expect("start");
    // Published, delayed, retried, dead-lettered (rejected and out of attempts), de-duplicated.
    let mut ids = Vec::new();
    for n in [1u64, 3, 5, 7] {
        ids.push(env.bus.publish(&Job { n }).await.expect("publish").event_id);
    }
    ids.push(
        env.bus
            .publish_after(&Job { n: 11 }, Duration::from_millis(200))
            .await
            .expect("after")
            .event_id,
    );
    let opts = PublishOptions::new().dedup("once", Duration::from_secs(30));
    ids.push(
        env.bus
            .publish_with(&Job { n: 13 }, opts)
            .await
            .expect("dedup")
            .event_id,
    );
    for id in &ids {
        env.bus.wait_for::<Job>(id, "g", T).await.expect("finish");
    }
    w.shutdown().await.expect("shutdown");

    let r = env.bus.redis();
    let mut seen = Vec::new();
    for key in env.keys().await {
        let kind: String = r
            .custom(
                fred::types::CustomCommand::new_static("TYPE", None, false),
                vec![key.clone()],
            )
            .await
            .expect("TYPE");
        let ttl: i64 = r.pttl(key.as_str()).await.expect("PTTL");
        let known_set = (kind == "zset" && key.ends_with(":delayed"))
            || (kind == "hash" && key.contains(":retry:"));
        assert!(
            kind == "stream" || known_set || ttl > 0,
            "key {key} ({kind}) is neither a stream nor a known set and has no TTL ({ttl})"
        );
        seen.push(format!("{kind} {}", key.trim_start_matches(&env.prefix)));
    }
    seen.sort();
    // Status records and the de-dup key exist and expire; dead letters are a stream.
    assert!(
        seen.iter().any(|k| k.starts_with("hash :{jobs}:status:")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|k| k.starts_with("string :{jobs}:dedup:once")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"stream :{jobs}:dlq:g".to_owned()),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_lanes_are_taken_first() {
    use bus_core::Priority;
    let env = TestEnv::new("lanes").await;
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let o2 = order.clone();
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g").concurrency(1),
            move |j: Job, _| {
                let o2 = o2.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    o2.lock().expect("lock").push(j.n);
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let low = PublishOptions::new().priority(Priority::Low);
    for n in 0..30 {
        env.bus
            .publish_with(&Job { n }, low.clone())
            .await
            .expect("low");
    }
    eventually(T, "some low events handled", || async {
        order.lock().expect("lock").len() >= 3
    })
    .await;
    // Published later, while 25+ low events wait.
    for n in 100..103 {
        env.bus.publish(&Job { n }).await.expect("normal");
    }
    let high = PublishOptions::new().priority(Priority::High);
    for n in 200..203 {
        env.bus
            .publish_with(&Job { n }, high.clone())
            .await
            .expect("high");
    }
    eventually(T, "all 36 events", || async {
        order.lock().expect("lock").len() == 36
    })
    .await;
    w.shutdown().await.expect("shutdown");
    let order = order.lock().expect("lock").clone();
    let pos = |n: u64| order.iter().position(|x| *x == n).expect("handled");
    let last_high = (200..203).map(pos).max().expect("max");
    let last_normal = (100..103).map(pos).max().expect("max");
    let lows_after_first_high: usize = order[(200..203).map(pos).min().expect("min")..]
        .iter()
        .filter(|n| **n < 30)
        .count();
    // The highs come before every remaining low, the normals right after them; at most one low
    // (already running or read when they arrived) slips in between.
    assert!(last_high < last_normal, "{order:?}");
    let remaining_lows_before_normals = order[..last_normal].iter().filter(|n| **n < 30).count();
    let lows_before_first_high = order[..(200..203).map(pos).min().expect("min")]
        .iter()
        .filter(|n| **n < 30)
        .count();
    assert!(
        remaining_lows_before_normals <= lows_before_first_high + 2,
        "{order:?}"
    );
    assert!(
        lows_after_first_high >= 20,
        "the low backlog must wait for the high lane: {order:?}"
    );
    // Every lane's entries were acknowledged.
    for lane in ["jobs"] {
        let key = env.bus.stream_key(lane).expect("key");
        let pending: Vec<fred::types::Value> = env
            .bus
            .redis()
            .xpending(key.as_str(), "g", ())
            .await
            .expect("XPENDING");
        assert_eq!(
            pending.first().and_then(fred::types::Value::as_u64),
            Some(0)
        );
    }
    let high_key = format!("{}:high", env.bus.stream_key("jobs").expect("key"));
    let len: u64 = env.bus.redis().xlen(high_key.as_str()).await.expect("XLEN");
    assert_eq!(len, 3, "high-priority events live in their own lane stream");
}
