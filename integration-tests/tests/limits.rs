//! Limits and hostile input: de-dup windows Redis would refuse, delayed events the mover cannot
//! turn into entries, header limits at publish, oversized entries and long errors on consume.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Job;
use std::time::{Duration, SystemTime};

use bus_core::{Error, PublishOptions, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::support::{recording, Rng};
use integration_tests::{Recorder, TestEnv};

async fn xlen(env: &TestEnv, key: &str) -> u64 {
    env.bus.redis().xlen(key).await.expect("XLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_window_redis_would_refuse_writes_nothing_and_a_retry_publishes_once() {
    let env = TestEnv::new("dedupwin").await;
    let key = env.bus.stream_key("jobs").expect("key");
    for window in [Duration::MAX, Duration::ZERO] {
        let r = env
            .bus
            .publish_with(&Job { n: 1 }, PublishOptions::new().dedup("k", window))
            .await;
        assert!(matches!(r, Err(Error::Config(_))), "{window:?}: {r:?}");
    }
    assert_eq!(
        xlen(&env, &key).await,
        0,
        "a refused publish wrote an entry"
    );
    // The caller retries with a sane window: exactly one entry, then duplicates.
    let opts = PublishOptions::new().dedup("k", Duration::from_secs(60));
    let first = env
        .bus
        .publish_with(&Job { n: 1 }, opts.clone())
        .await
        .expect("publish");
    let again = env
        .bus
        .publish_with(&Job { n: 1 }, opts)
        .await
        .expect("publish");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.entry_id, first.entry_id);
    assert_eq!(xlen(&env, &key).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_event_the_mover_cannot_move_is_set_aside_and_the_rest_keep_moving() {
    let env = TestEnv::new("mover").await;
    let delayed = format!("{}:{{jobs}}:delayed", env.prefix);
    let aside = format!("{}:{{jobs}}:delayed-dlq", env.prefix);
    let r = env.bus.redis();
    // Bad members due first: a nested value (XADD refuses a table argument), a field list too
    // long for Lua's unpack, and bytes that are not MessagePack at all.
    let nested: Vec<u8> = vec![0x92, 0xa1, b'p', 0x91, 0x01]; // ["p", [1]]
                                                              // A MessagePack array32 of 10 000 short strings.
    let mut huge = vec![0xdd];
    huge.extend_from_slice(&10_000u32.to_be_bytes());
    for i in 0..10_000u32 {
        let s = format!("f{i}");
        huge.push(0xa0 | s.len() as u8);
        huge.extend_from_slice(s.as_bytes());
    }
    for (score, member) in [(1.0, nested), (2.0, huge), (3.0, b"\xc1garbage".to_vec())] {
        let _: Value = r
            .zadd(
                delayed.as_str(),
                None,
                None,
                false,
                false,
                (score, Value::Bytes(member.into())),
            )
            .await
            .expect("ZADD");
    }
    // Good events due at once, behind them.
    for n in 0..5 {
        env.bus
            .publish_at(&Job { n }, SystemTime::now() - Duration::from_secs(1))
            .await
            .expect("publish_at");
    }
    let rec = Recorder::new();
    let w = env
        .bus
        .worker()
        .move_delayed_every(Duration::from_millis(50))
        .subscribe(recording(
            SubscriberOptions::new("g"),
            &rec,
            |j: &Job, _| j.n.to_string(),
        ))
        .start()
        .await
        .expect("start");
    rec.wait_for(Duration::from_secs(10), "the good delayed events", |m| {
        (0..5).all(|n| m.contains_key(&n.to_string()))
    })
    .await;
    assert_eq!(env.bus.delayed_count("jobs").await.expect("count"), 0);
    let rows: Value = r
        .xrange(aside.as_str(), "-", "+", None)
        .await
        .expect("XRANGE");
    let rows = match rows {
        Value::Array(a) => a,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        rows.len(),
        3,
        "each bad member is moved aside once: {rows:?}"
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_event_with_more_fields_than_the_mover_can_move_is_refused_at_schedule_time() {
    // Header limits raised far beyond the defaults, so only the mover's own limit applies.
    let env = TestEnv::with_builder("moverfields", |b| b.header_limits(100_000, 1 << 24)).await;
    let mut opts = PublishOptions::new();
    for i in 0..4100 {
        opts = opts.header(format!("h{i}"), "x");
    }
    // The immediate path accepts it (Redis takes the XADD); the delayed path must refuse it now,
    // not leave it for a mover that cannot move it.
    let r = env
        .bus
        .publish_after_with(&Job { n: 1 }, Duration::from_millis(10), opts)
        .await;
    assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    assert_eq!(env.bus.delayed_count("jobs").await.expect("count"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limits_are_refused_and_nothing_is_written() {
    let env = TestEnv::new("headers").await;
    let key = env.bus.stream_key("jobs").expect("key");
    let mut many = PublishOptions::new();
    for i in 0..=bus_core::DEFAULT_MAX_HEADERS {
        many = many.header(format!("h{i}"), "x");
    }
    let big = PublishOptions::new().header("h", "x".repeat(bus_core::DEFAULT_MAX_HEADER_BYTES));
    for opts in [many, big] {
        let r = env.bus.publish_with(&Job { n: 1 }, opts).await;
        assert!(matches!(r, Err(Error::HeadersTooLarge { .. })), "{r:?}");
    }
    assert_eq!(xlen(&env, &key).await, 0);
    let ok = PublishOptions::new().header("tenant", "acme");
    env.bus
        .publish_with(&Job { n: 1 }, ok)
        .await
        .expect("within the limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_dead_lettered_undecoded_and_long_errors_are_cut() {
    let env = TestEnv::new("toolarge").await;
    let key = env.bus.stream_key("jobs").expect("key");
    // Another producer writes a 3 MiB entry; the bus then publishes a normal one and one whose
    // handler fails with a 20 KiB error.
    let _: String = env
        .bus
        .redis()
        .xadd(
            key.as_str(),
            false,
            None,
            "*",
            vec![
                ("v", Value::from("1")),
                ("p", Value::Bytes(vec![b'x'; 3 << 20].into())),
            ],
        )
        .await
        .expect("XADD");
    env.bus.publish(&Job { n: 1 }).await.expect("publish");
    env.bus.publish(&Job { n: 2 }).await.expect("publish");
    let rec = Recorder::new();
    let rc = rec.clone();
    let w = integration_tests::support::start_worker(
        &env.bus,
        bus_core::subscriber_fn(SubscriberOptions::new("g"), move |j: Job, _| {
            let rc = rc.clone();
            async move {
                rc.record(j.n.to_string());
                if j.n == 2 {
                    return Err(bus_core::HandlerError::reject("e".repeat(20 * 1024)));
                }
                Ok(())
            }
        }),
    )
    .await;
    let dlq = env.bus.dead_letters("jobs", "g").expect("dlq");
    integration_tests::eventually(Duration::from_secs(10), "two dead letters", || async {
        dlq.count().await.expect("count") == 2 && rec.snapshot().contains_key("1")
    })
    .await;
    // Handlers run concurrently, so the two dead letters may land in either order.
    let dead = dlq.list(10).await.expect("list");
    let by_reason = |reason: &str| {
        dead.iter().find(|d| d.reason == reason).unwrap_or_else(|| {
            let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
            panic!("no {reason} dead letter among {reasons:?}")
        })
    };
    let too_large = by_reason("too_large");
    assert!(too_large.error.contains("bytes"), "{}", too_large.error);
    let rejected = by_reason("rejected");
    assert!(
        rejected.error.len() < 4200 && rejected.error.ends_with("[truncated]"),
        "error of {} bytes",
        rejected.error.len()
    );
    w.shutdown().await.expect("shutdown");
}

/// Field names and values of a raw entry.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One hostile entry and the dead-letter reason it must get.
fn hostile(rng: &mut Rng, n: u64) -> (Fields, &'static str) {
    let good_payload = rmp_serde_payload(n);
    let envelope = |v: &[u8], ty: &[u8], p: Vec<u8>| {
        vec![
            (b"v".to_vec(), v.to_vec()),
            (b"id".to_vec(), format!("bad-{n}").into_bytes()),
            (b"type".to_vec(), ty.to_vec()),
            (b"ts".to_vec(), b"1".to_vec()),
            (b"ct".to_vec(), b"msgpack".to_vec()),
            (b"p".to_vec(), p),
        ]
    };
    match rng.next_u64() % 7 {
        // Random fields, no envelope at all.
        0 => {
            let k = 1 + rng.next_u64() as usize % 8;
            let fields = (0..k)
                .map(|i| {
                    let len = rng.next_u64() as usize % 40;
                    let value = (0..len).map(|_| rng.next_u64() as u8).collect();
                    (format!("f{i}").into_bytes(), value)
                })
                .collect();
            (fields, "decode")
        }
        1 => (envelope(b"99", b"Job", good_payload), "decode"),
        2 => {
            let len = 1 + rng.next_u64() as usize % 200;
            let garbage = (0..len).map(|_| rng.next_u64() as u8).collect();
            (envelope(b"1", b"Job", garbage), "decode")
        }
        3 => {
            let mut bomb = vec![0x91u8; 200 + rng.next_u64() as usize % 5000];
            bomb.push(0xc0);
            (envelope(b"1", b"Job", bomb), "decode")
        }
        4 => (envelope(b"1", &[0xff, 0xfe], good_payload), "decode"),
        5 => (envelope(b"1", b"Job", vec![b'x'; 3 << 20]), "too_large"),
        _ => (envelope(b"1", b"NoSuchType", good_payload), "unknown_type"),
    }
}

fn rmp_serde_payload(n: u64) -> Vec<u8> {
    bus_core::Codec::MessagePack
        .encode(&Job { n })
        .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fed_hostile_entries_among_good_ones_handles_every_good_one_and_dead_letters_the_rest(
) {
    hostile_entries_among_good_ones("hostile", false).await;
}

/// The same in blocking mode: payloads are decoded on the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_mode_worker_fed_hostile_entries_handles_every_good_one_and_dead_letters_the_rest(
) {
    hostile_entries_among_good_ones("hostile-blocking", true).await;
}

async fn hostile_entries_among_good_ones(label: &str, blocking: bool) {
    let env = TestEnv::new(label).await;
    let key = env.bus.stream_key("jobs").expect("key");
    let mut rng = Rng(0x5eed_cafe);
    let mut expected: std::collections::HashMap<&'static str, u64> = Default::default();
    let good = 150u64;
    for n in 0..good {
        env.bus.publish(&Job { n }).await.expect("publish");
        let (fields, reason) = hostile(&mut rng, n);
        *expected.entry(reason).or_default() += 1;
        let fields: Vec<(fred::types::Key, Value)> = fields
            .into_iter()
            .map(|(k, v)| {
                (
                    fred::types::Key::from(fred::bytes::Bytes::from(k)),
                    Value::Bytes(v.into()),
                )
            })
            .collect();
        let _: String = env
            .bus
            .redis()
            .xadd(key.as_str(), false, None, "*", fields)
            .await
            .expect("XADD");
    }
    let rec = Recorder::new();
    let w = integration_tests::support::start_worker(
        &env.bus,
        recording(
            SubscriberOptions::new("g")
                .unknown_types(bus_core::UnknownTypes::DeadLetter)
                .blocking(blocking),
            &rec,
            |j: &Job, _| j.n.to_string(),
        ),
    )
    .await;
    let dlq = env.bus.dead_letters("jobs", "g").expect("dlq");
    integration_tests::eventually(
        Duration::from_secs(30),
        "good handled, bad dead-lettered",
        || async {
            rec.snapshot().len() as u64 == good && dlq.count().await.expect("count") == good
        },
    )
    .await;
    let mut got: std::collections::HashMap<String, u64> = Default::default();
    for d in dlq.list(10_000).await.expect("list") {
        *got.entry(d.reason).or_default() += 1;
    }
    let expected: std::collections::HashMap<String, u64> = expected
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        integration_tests::pending_count(&env.bus, "jobs", "g").await,
        Some(0)
    );
    // Still alive: a new event after all that is handled.
    env.bus.publish(&Job { n: 10_000 }).await.expect("publish");
    rec.wait_for(Duration::from_secs(10), "the worker is alive", |m| {
        m.contains_key("10000")
    })
    .await;
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_stream_keeps_at_most_its_cap() {
    let env = TestEnv::new("dlqcap").await;
    for n in 0..30 {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    let rec = Recorder::new();
    let rc = rec.clone();
    let w = integration_tests::support::start_worker(
        &env.bus,
        bus_core::subscriber_fn(
            SubscriberOptions::new("g").max_dead_letters(5),
            move |j: Job, _| {
                let rc = rc.clone();
                async move {
                    rc.record(j.n.to_string());
                    Err::<(), _>(bus_core::HandlerError::reject("no"))
                }
            },
        ),
    )
    .await;
    rec.wait_for(Duration::from_secs(10), "every event ran", |m| {
        m.len() == 30
    })
    .await;
    integration_tests::eventually(Duration::from_secs(10), "nothing pending", || async {
        integration_tests::pending_count(&env.bus, "jobs", "g").await == Some(0)
    })
    .await;
    let dlq = env.bus.dead_letters("jobs", "g").expect("dlq");
    assert_eq!(
        dlq.count().await.expect("count"),
        5,
        "the newest five are kept"
    );
    w.shutdown().await.expect("shutdown");
}

/// A handler result over the group's limit is not stored: the event still succeeds, its status
/// says why, and a request gets a typed error instead of a huge status record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_is_not_stored_and_a_request_says_why() {
    let env = TestEnv::new("bigresult").await;
    let w = integration_tests::support::start_worker(
        &env.bus,
        bus_core::subscriber_fn(
            SubscriberOptions::new("g")
                .track_status(true)
                .max_result_bytes(1024),
            |j: Job, _| async move { Ok::<_, bus_core::HandlerError>("r".repeat(j.n as usize)) },
        ),
    )
    .await;
    let t = Duration::from_secs(10);
    let small: String = env
        .bus
        .request(&Job { n: 10 }, "g", t)
        .await
        .expect("small");
    assert_eq!(small.len(), 10);
    let big = env
        .bus
        .request::<_, String>(&Job { n: 100_000 }, "g", t)
        .await;
    match big {
        Err(Error::ResultNotKept { group, reason }) => {
            assert_eq!(group, "g");
            assert!(
                reason.contains("over this group's limit of 1024 bytes"),
                "{reason}"
            );
        }
        other => panic!("expected ResultNotKept, got {other:?}"),
    }
    // Nothing of the result reached Redis: the status hash stays small.
    let keys = env.keys().await;
    for k in keys.iter().filter(|k| k.contains(":status:")) {
        let len: u64 = env
            .bus
            .redis()
            .custom(
                fred::types::CustomCommand::new_static("MEMORY", None, false),
                vec!["USAGE", k.as_str()],
            )
            .await
            .expect("MEMORY USAGE");
        assert!(len < 4096, "{k} uses {len} bytes");
    }
    w.shutdown().await.expect("shutdown");
}
