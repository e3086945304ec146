//! Foundation behaviour against a real Redis: fan-out, worker pools, late groups, back-pressure,
//! graceful shutdown, input validation, garbage entries, connect-time checks.

use bus_core::testing::RedisAccess;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{subscriber_fn, Bus, Error, Event, HandlerError, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::{eventually, Recorder, RedisServer, TestEnv};

async fn pending(bus: &Bus, stream: &str, group: &str) -> u64 {
    integration_tests::pending_count(bus, stream, group)
        .await
        .expect("XPENDING")
}
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderCancelled {
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "payments")]
struct PaymentTaken {
    n: u64,
}

async fn publish_orders(bus: &Bus, range: std::ops::Range<u64>) {
    let events: Vec<OrderPlaced> = range.map(|n| OrderPlaced { n }).collect();
    for chunk in events.chunks(200) {
        bus.publish_batch(chunk).await.expect("publish");
    }
}

/// Records `<group>:<n>` for every event the group handles.
fn recording(group: &str, rec: &Recorder) -> impl bus_core::Subscriber<Event = OrderPlaced> {
    let g = group.to_owned();
    integration_tests::support::recording(
        SubscriberOptions::new(group),
        rec,
        move |e: &OrderPlaced, _| format!("{g}:{}", e.n),
    )
}

fn counts_per_group(snap: &std::collections::HashMap<String, u64>, group: &str) -> usize {
    snap.keys()
        .filter(|k| k.starts_with(&format!("{group}:")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_every_group_handles_every_event_exactly_once() {
    let env = TestEnv::new("fanout").await;
    let rec = Recorder::new();
    let pay = Recorder::new();
    let pay2 = pay.clone();
    let worker = env
        .bus
        .worker()
        .subscribe(recording("billing", &rec))
        .subscribe(recording("email", &rec))
        .subscribe(recording("analytics", &rec))
        .subscribe(subscriber_fn(
            SubscriberOptions::new("ledger"),
            move |e: PaymentTaken, _| {
                let pay = pay2.clone();
                async move {
                    pay.record(e.n.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    const N: u64 = 1000;
    publish_orders(&env.bus, 0..N).await;
    for n in 0..50 {
        env.bus.publish(&PaymentTaken { n }).await.expect("publish");
    }
    rec.wait_for(T, "3 groups x 1000 events", |s| s.len() == 3 * N as usize)
        .await;
    pay.wait_for(T, "50 payments", |s| s.len() == 50).await;
    worker.shutdown().await.expect("shutdown");

    let snap = rec.snapshot();
    for g in ["billing", "email", "analytics"] {
        assert_eq!(counts_per_group(&snap, g), N as usize, "group {g}");
        assert_eq!(
            pending(&env.bus, "orders", g).await,
            0,
            "group {g} left entries pending"
        );
    }
    let dups: Vec<_> = snap.iter().filter(|(_, c)| **c != 1).collect();
    assert!(dups.is_empty(), "handled more than once: {dups:?}");
    assert_eq!(pay.total(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_workers_shares_one_group() {
    let env = TestEnv::new("pool").await;
    let rec = Recorder::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let bus = env.another_bus().await;
        let rec = rec.clone();
        let h = bus
            .worker()
            .subscribe(subscriber_fn(
                SubscriberOptions::new("billing").concurrency(4),
                move |e: OrderPlaced, ctx| {
                    let rec = rec.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        rec.record(format!("{}|{}", e.n, ctx.consumer()));
                    }
                },
            ))
            .start()
            .await
            .expect("start");
        handles.push(h);
    }
    let consumers: HashSet<String> = handles
        .iter()
        .map(|h| h.consumer_name().to_owned())
        .collect();
    assert_eq!(consumers.len(), 3, "consumer names must be unique");
    const N: u64 = 600;
    publish_orders(&env.bus, 0..N).await;
    rec.wait_for(T, "600 events", |s| s.len() >= N as usize)
        .await;
    for h in handles {
        h.shutdown().await.expect("shutdown");
    }
    let snap = rec.snapshot();
    let mut per_event = std::collections::HashMap::<u64, u64>::new();
    let mut per_consumer = std::collections::HashMap::<String, u64>::new();
    for (k, c) in &snap {
        let (n, consumer) = k.split_once('|').expect("key");
        *per_event.entry(n.parse().expect("n")).or_default() += c;
        *per_consumer.entry(consumer.to_owned()).or_default() += c;
    }
    assert_eq!(per_event.len(), N as usize);
    assert!(
        per_event.values().all(|c| *c == 1),
        "an event was handled twice"
    );
    assert_eq!(
        per_consumer.len(),
        3,
        "every worker should handle some: {per_consumer:?}"
    );
    assert_eq!(pending(&env.bus, "orders", "billing").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_group_gets_events_published_before_it_existed() {
    let env = TestEnv::new("late").await;
    publish_orders(&env.bus, 0..100).await;
    let rec = Recorder::new();
    let w = env.start(recording("late", &rec)).await;
    rec.wait_for(T, "100 old events", |s| s.len() == 100).await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(rec.total(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_new_events_skips_history() {
    let env = TestEnv::new("startnew").await;
    publish_orders(&env.bus, 0..10).await;
    let rec = Recorder::new();
    let sub = recording("fresh", &rec);
    let w = env
        .bus
        .worker()
        .subscribe_with(sub, |o| o.start_from(bus_core::StartFrom::NewEvents))
        .start()
        .await
        .expect("start");
    publish_orders(&env.bus, 10..15).await;
    rec.wait_for(T, "5 new events", |s| s.len() == 5).await;
    w.shutdown().await.expect("shutdown");
    let snap = rec.snapshot();
    assert!(
        (10..15).all(|n| snap.contains_key(&format!("fresh:{n}"))),
        "{snap:?}"
    );
    assert_eq!(snap.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_never_exceeds_concurrency() {
    let env = TestEnv::new("bp").await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let rec = Recorder::new();
    let (r, p, rc) = (running.clone(), peak.clone(), rec.clone());
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("slow").concurrency(4),
            move |e: OrderPlaced, _| {
                let (r, p, rc) = (r.clone(), p.clone(), rc.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    rc.record(e.n.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    publish_orders(&env.bus, 0..80).await;
    // While the backlog drains, Redis must never show more deliveries than the worker can run
    // plus the acks it has not flushed yet: it does not read what it cannot run.
    let mut max_pending = 0;
    while rec.total() < 80 {
        max_pending = max_pending.max(pending(&env.bus, "orders", "slow").await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.shutdown().await.expect("shutdown");
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "{peak} handlers ran at once with concurrency 4");
    assert_eq!(peak, 4, "the worker should use all 4 slots with a backlog");
    assert!(
        max_pending <= 8,
        "{max_pending} entries were pending with concurrency 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_acks_in_flight_events_and_loses_none() {
    let env = TestEnv::new("shutdown").await;
    let rec = Recorder::new();
    let started = Recorder::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (rc, st, g) = (rec.clone(), started.clone(), gate.clone());
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g").concurrency(8),
            move |e: OrderPlaced, _| {
                let (rc, st, g) = (rc.clone(), st.clone(), g.clone());
                async move {
                    st.record(e.n.to_string());
                    let _permit = g.acquire().await.expect("gate");
                    rc.record(e.n.to_string());
                }
            },
        ))
        .start()
        .await
        .expect("start");
    publish_orders(&env.bus, 0..20).await;
    started
        .wait_for(T, "8 handlers running", |s| s.len() == 8)
        .await;
    let stopping = tokio::spawn(w.shutdown());
    // Let the blocked handlers finish only after shutdown began.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.add_permits(1000);
    stopping.await.expect("join").expect("shutdown");
    let first = rec.snapshot();
    assert!(
        first.len() >= 8,
        "in-flight handlers must finish: {first:?}"
    );
    assert_eq!(
        pending(&env.bus, "orders", "g").await,
        0,
        "in-flight events must be acked"
    );

    // The rest is still there for the next worker; nothing is lost or repeated.
    let rec2 = Recorder::new();
    let w2 = env.start(recording("g", &rec2)).await;
    let want = 20 - first.len();
    rec2.wait_for(T, "the remaining events", |s| s.len() == want)
        .await;
    w2.shutdown().await.expect("shutdown");
    let mut all: Vec<u64> = first.keys().map(|k| k.parse().expect("n")).collect();
    all.extend(
        rec2.snapshot()
            .keys()
            .map(|k| k.trim_start_matches("g:").parse::<u64>().expect("n")),
    );
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_handlers_that_outlive_the_grace_period() {
    let env = TestEnv::new("grace").await;
    let started = Recorder::new();
    let st = started.clone();
    let w = env
        .bus
        .worker()
        .shutdown_grace(Duration::from_millis(200))
        .subscribe(subscriber_fn(
            SubscriberOptions::new("stuck"),
            move |_e: OrderPlaced, _| {
                let st = st.clone();
                async move {
                    st.record("x");
                    std::future::pending::<()>().await;
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let consumer = w.consumer_name().to_owned();
    env.bus
        .publish(&OrderPlaced { n: 1 })
        .await
        .expect("publish");
    started
        .wait_for(T, "the handler to start", |s| !s.is_empty())
        .await;
    w.shutdown().await.expect("shutdown");
    // Still pending (not lost), owned by the stopped consumer, and idle far past any timeout.
    let key = env.bus.stream_key("orders").expect("key");
    let rows: Vec<(String, String, u64, u64)> = env
        .bus
        .redis()
        .xpending(key.as_str(), "stuck", ("-", "+", 10))
        .await
        .expect("XPENDING");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, consumer);
    assert!(
        rows[0].2 > 1_000_000_000,
        "idle {} ms: not released for reclaim",
        rows[0].2
    );
    assert_eq!(rows[0].3, 1, "releasing must not count a delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_leave_their_group_on_clean_shutdown() {
    let env = TestEnv::new("leave").await;
    let rec = Recorder::new();
    let w = env.start(recording("g", &rec)).await;
    publish_orders(&env.bus, 0..5).await;
    rec.wait_for(T, "5 events", |s| s.len() == 5).await;
    w.shutdown().await.expect("shutdown");
    let key = env.bus.stream_key("orders").expect("key");
    let consumers: Vec<Value> = env
        .bus
        .redis()
        .xinfo_consumers(key.as_str(), "g")
        .await
        .expect("XINFO");
    assert!(consumers.is_empty(), "consumer left behind: {consumers:?}");
}

struct BadStream;
impl Serialize for BadStream {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}
impl<'de> Deserialize<'de> for BadStream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| BadStream)
    }
}
impl Event for BadStream {
    const STREAM: &'static str = "bad stream";
    const NAME: &'static str = "BadStream";
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "blobs")]
struct Blob {
    data: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_oversized_payloads_are_rejected_with_nothing_written() {
    let env = TestEnv::with_builder("reject", |b| b.max_payload_bytes(1000)).await;
    let bad_prefix = Bus::builder().prefix("a b").connect(&env.url).await;
    assert!(
        matches!(bad_prefix, Err(Error::InvalidName { kind: "prefix", .. })),
        "{bad_prefix:?}"
    );
    let bad_prefix = Bus::builder().prefix("x{y}").connect(&env.url).await;
    assert!(matches!(
        bad_prefix,
        Err(Error::InvalidName { kind: "prefix", .. })
    ));

    let r = env.bus.publish(&BadStream).await;
    assert!(
        matches!(r, Err(Error::InvalidName { kind: "stream", .. })),
        "{r:?}"
    );

    let r = env
        .bus
        .publish(&Blob {
            data: "x".repeat(2000),
        })
        .await;
    assert!(
        matches!(r, Err(Error::PayloadTooLarge { limit: 1000, .. })),
        "{r:?}"
    );
    let batch = vec![
        Blob { data: "ok".into() },
        Blob {
            data: "x".repeat(2000),
        },
        Blob { data: "ok".into() },
    ];
    let r = env.bus.publish_batch(&batch).await;
    assert!(matches!(r, Err(Error::PayloadTooLarge { .. })), "{r:?}");
    let r = env
        .bus
        .publish_with(
            &Blob { data: "ok".into() },
            bus_core::PublishOptions::new().header("bad name", "v"),
        )
        .await;
    assert!(
        matches!(r, Err(Error::InvalidName { kind: "header", .. })),
        "{r:?}"
    );

    let r = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("bad group"),
            |_e: OrderPlaced, _| async {},
        ))
        .start()
        .await;
    assert!(
        matches!(r, Err(Error::InvalidName { kind: "group", .. })),
        "{r:?}"
    );
    let r = env
        .bus
        .worker()
        .subscribe(recording("g", &Recorder::new()))
        .subscribe(recording("g", &Recorder::new()))
        .start()
        .await;
    assert!(
        matches!(r, Err(Error::Config(_))),
        "duplicate subscriber: {r:?}"
    );

    assert_eq!(
        env.keys().await,
        Vec::<String>::new(),
        "rejected calls wrote keys"
    );

    // Just under the limit is fine.
    env.bus
        .publish(&Blob {
            data: "x".repeat(900),
        })
        .await
        .expect("fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_entries_are_dead_lettered_and_never_stop_the_worker() {
    let env = TestEnv::new("garbage").await;
    let rec = Recorder::new();
    let w = env.start(recording("g", &rec)).await;
    let key = env.bus.stream_key("orders").expect("key");
    let r = env.bus.redis();
    let garbage: Vec<Vec<(Value, Value)>> = vec![
        vec![("foo".into(), "bar".into())],
        vec![
            ("v".into(), "1".into()),
            ("id".into(), "e-1".into()),
            ("type".into(), "OrderPlaced".into()),
            ("ts".into(), "1".into()),
            ("ct".into(), "msgpack".into()),
            ("p".into(), Value::Bytes(vec![0xc1, 0xff, 0x00].into())),
        ],
        vec![(
            Value::Bytes(vec![0xff, 0xfe].into()),
            Value::Bytes(vec![0x80].into()),
        )],
        vec![
            ("v".into(), "1".into()),
            ("id".into(), "e-2".into()),
            ("type".into(), "OrderPlaced".into()),
            ("ts".into(), "1".into()),
            ("ct".into(), "xml".into()),
            ("p".into(), "<x/>".into()),
        ],
    ];
    for fields in garbage {
        let args: Vec<Value> = std::iter::once(Value::from(key.as_str()))
            .chain(std::iter::once(Value::from("*")))
            .chain(fields.into_iter().flat_map(|(k, v)| [k, v]))
            .collect();
        let _: String = r
            .custom(
                fred::types::CustomCommand::new_static("XADD", None, false),
                args,
            )
            .await
            .expect("XADD");
    }
    // Another event type on the same stream is skipped, not dead-lettered.
    env.bus
        .publish(&OrderCancelled { n: 1 })
        .await
        .expect("publish");
    publish_orders(&env.bus, 0..10).await;
    rec.wait_for(T, "the valid events after the garbage", |s| s.len() == 10)
        .await;
    eventually(T, "nothing pending", || async {
        pending(&env.bus, "orders", "g").await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");

    let mut dl = env
        .bus
        .dead_letters("orders", "g")
        .expect("dlq")
        .list(100)
        .await
        .expect("dead letters");
    // Handlers run concurrently: dead letters come in any order; sort by original entry id.
    dl.sort_by_key(|d| {
        let (ms, seq) = d.entry_id.split_once('-').expect("entry id");
        (
            ms.parse::<u64>().expect("ms"),
            seq.parse::<u64>().expect("seq"),
        )
    });
    assert_eq!(dl.len(), 4, "{dl:#?}");
    assert!(
        dl.iter()
            .all(|d| d.reason == "decode" && d.group == "g" && d.attempts == 1),
        "{dl:#?}"
    );
    assert!(dl
        .iter()
        .all(|d| !d.error.is_empty() && !d.entry_id.is_empty()));
    assert_eq!(
        dl[1].event_id.as_deref(),
        Some("e-1"),
        "the original entry is kept"
    );
    assert_eq!(
        dl[2].fields,
        vec![(vec![0xff, 0xfe], vec![0x80])],
        "binary fields kept byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_go_to_the_dead_letter_stream_at_once() {
    let env = TestEnv::new("rejects").await;
    let rec = Recorder::new();
    let rc = rec.clone();
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g"),
            move |e: OrderPlaced, _| {
                let rc = rc.clone();
                async move {
                    rc.record(e.n.to_string());
                    if e.n.is_multiple_of(2) {
                        Err(HandlerError::reject(format!("bad order {}", e.n)))
                    } else {
                        Ok(())
                    }
                }
            },
        ))
        .start()
        .await
        .expect("start");
    publish_orders(&env.bus, 0..6).await;
    rec.wait_for(T, "6 events", |s| s.len() == 6).await;
    eventually(T, "nothing pending", || async {
        pending(&env.bus, "orders", "g").await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");
    let dl = env
        .bus
        .dead_letters("orders", "g")
        .expect("dlq")
        .list(100)
        .await
        .expect("dl");
    let mut errors: Vec<String> = dl.iter().map(|d| d.error.clone()).collect();
    errors.sort();
    assert_eq!(errors, vec!["bad order 0", "bad order 2", "bad order 4"]);
    assert!(dl.iter().all(|d| d.reason == "rejected"));
    assert_eq!(rec.total(), 6, "rejected events are not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_json_codec_round_trip() {
    let env = TestEnv::with_builder("json", |b| b.codec(bus_core::Codec::Json)).await;
    let rec = Recorder::new();
    let rc = rec.clone();
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g"),
            move |e: OrderPlaced, ctx| {
                let rc = rc.clone();
                async move {
                    rc.record(format!(
                        "{}|{}|{}|{}",
                        e.n,
                        ctx.header("traceparent").unwrap_or("-"),
                        ctx.event_type(),
                        ctx.attempt()
                    ));
                }
            },
        ))
        .start()
        .await
        .expect("start");
    let p = env
        .bus
        .publish_with(
            &OrderPlaced { n: 7 },
            bus_core::PublishOptions::new().header("traceparent", "00-abc-01"),
        )
        .await
        .expect("publish");
    assert_eq!(p.event_id.len(), 36);
    rec.wait_for(T, "the event", |s| !s.is_empty()).await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(
        rec.snapshot().keys().next().map(String::as_str),
        Some("7|00-abc-01|OrderPlaced|1")
    );
    // JSON payloads are readable by other languages.
    let key = env.bus.stream_key("orders").expect("key");
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = env
        .bus
        .redis()
        .xrange(key.as_str(), "-", "+", None)
        .await
        .expect("XRANGE");
    // The entry's one field: the line `2 <event id> <time> <codec> <type>`, then the payload.
    let value = entries[0].1.get("e").expect("field e");
    let (line, payload) = value.split_once('\n').expect("a line feed");
    assert_eq!(payload, r#"{"n":7}"#);
    let parts: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!(parts[0], "2");
    assert_eq!(parts[1], p.event_id);
    assert!(parts[2].parse::<u64>().is_ok(), "{line}");
    assert_eq!(&parts[3..], ["json", "OrderPlaced"]);
}

#[tokio::test]
async fn connect_to_nothing_is_unreachable() {
    let port = integration_tests::free_port().expect("port");
    let r = Bus::builder()
        .connect_timeout(Duration::from_secs(2))
        .connect(&format!("redis://127.0.0.1:{port}"))
        .await;
    assert!(matches!(r, Err(Error::Unreachable { .. })), "{r:?}");
}

#[tokio::test]
async fn bad_credentials_are_an_auth_error() {
    if !integration_tests::redis_server_available() {
        eprintln!("skipping: needs redis-server on PATH");
        return;
    }
    let server = RedisServer::builder()
        .password("s3cret")
        .start()
        .expect("redis-server");
    let port = server.port();
    let wrong = Bus::connect(&format!("redis://:nope@127.0.0.1:{port}")).await;
    assert!(matches!(wrong, Err(Error::Auth { .. })), "{wrong:?}");
    if let Err(e) = &wrong {
        assert!(
            !e.to_string().contains("nope"),
            "the password leaked into the error: {e}"
        );
    }
    let none = Bus::connect(&format!("redis://127.0.0.1:{port}")).await;
    assert!(matches!(none, Err(Error::Auth { .. })), "{none:?}");
    let ok = Bus::connect(&server.url()).await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// A fake Redis that claims to be 6.0.9: answers INFO with that version, everything else +OK.
async fn fake_old_redis() -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        let mut len = String::new();
                        let _ = r.read_line(&mut len).await;
                        let mut arg = String::new();
                        let _ = r.read_line(&mut arg).await;
                        args.push(arg.trim().to_uppercase());
                    }
                    let reply = match args.first().map(String::as_str) {
                        Some("INFO") => {
                            let body = "# Server\r\nredis_version:6.0.9\r\n";
                            format!("${}\r\n{body}\r\n", body.len())
                        }
                        Some("CLIENT") if args.get(1).map(String::as_str) == Some("ID") => {
                            ":7\r\n".into()
                        }
                        Some("PING") => "+PONG\r\n".into(),
                        _ => "+OK\r\n".into(),
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn redis_older_than_6_2_is_refused() {
    let port = fake_old_redis().await;
    let r = Bus::connect(&format!("redis://127.0.0.1:{port}")).await;
    match r {
        Err(Error::UnsupportedServer {
            version, required, ..
        }) => {
            assert_eq!(version, "6.0.9");
            assert_eq!(required, "6.2");
        }
        other => panic!("expected UnsupportedServer, got {other:?}"),
    }
}
