//! Entry formats against a real Redis: version 2 (the default) writes one field, version 1 six,
//! and one worker handles a stream holding both, as during a rolling upgrade; dead letters of
//! either version name their event and replay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::testing::RedisAccess;
use bus_core::{
    subscriber_fn, Bus, EnvelopeVersion, Event, HandlerError, PublishOptions, SubscriberOptions,
};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::support::start_worker;
use integration_tests::{eventually, Recorder, TestEnv};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "orders")]
struct OrderPlaced {
    n: u64,
}

async fn bus_writing(env: &TestEnv, version: EnvelopeVersion) -> Bus {
    Bus::builder()
        .prefix(env.prefix.clone())
        .envelope_version(version)
        .connect(&env.url)
        .await
        .expect("connect")
}

/// The field names of every entry of the stream, by entry id.
async fn field_names(bus: &Bus, stream: &str) -> Vec<Vec<String>> {
    let key = bus.stream_key(stream).expect("key");
    let entries: Vec<(String, HashMap<String, Value>)> = bus
        .redis()
        .xrange(&key, "-", "+", None)
        .await
        .expect("XRANGE");
    // A map loses the order; sort so the comparison does not depend on it.
    entries
        .into_iter()
        .map(|(_, f)| {
            let mut names: Vec<String> = f.into_keys().collect();
            names.sort();
            names
        })
        .collect()
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A subscriber of group `g` recording `<n> <event id> <type> <header tenant> <publish ms>` for
/// every event it handles.
fn recording_all(rec: &Recorder) -> impl bus_core::Subscriber<Event = OrderPlaced> {
    let rec = rec.clone();
    subscriber_fn(SubscriberOptions::new("g"), move |e: OrderPlaced, ctx| {
        let rec = rec.clone();
        async move {
            let at = ctx
                .published_at()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            rec.record(format!(
                "{} {} {} {} {at}",
                e.n,
                ctx.event_id(),
                ctx.event_type(),
                ctx.header("tenant").unwrap_or("-")
            ));
            Ok::<(), HandlerError>(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_two_writes_one_field_and_a_worker_reads_a_stream_holding_both_versions() {
    let env = TestEnv::new("envmix").await;
    let old = bus_writing(&env, EnvelopeVersion::V1).await;
    let before_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;

    // Interleaved, as when old and new publishers run side by side.
    let mut expected = HashMap::new();
    for n in 0..40u64 {
        let bus = if n % 2 == 0 { &old } else { &env.bus };
        let opts = PublishOptions::new().header("tenant", format!("t{n}"));
        let p = bus
            .publish_with(&OrderPlaced { n }, opts)
            .await
            .expect("publish");
        expected.insert(n, p.event_id);
    }
    let names = field_names(&env.bus, "orders").await;
    assert_eq!(names.len(), 40);
    for (n, f) in names.iter().enumerate() {
        let want = if n % 2 == 0 {
            sorted(&["v", "id", "type", "ts", "ct", "p", "h:tenant"])
        } else {
            sorted(&["e", "h:tenant"])
        };
        assert_eq!(f, &want, "entry {n}");
    }

    let rec = Recorder::new();
    let w = start_worker(&env.bus, recording_all(&rec)).await;
    rec.wait_for(T, "all 40 events", |s| s.len() == 40).await;
    w.shutdown().await.expect("shutdown");
    let seen: HashMap<String, u64> = rec
        .snapshot()
        .into_iter()
        .map(|(line, count)| {
            // The publish time is checked, then left out of the comparison.
            let (rest, at) = line.rsplit_once(' ').expect("a time");
            assert!(at.parse::<u64>().expect("ms") >= before_ms, "{line}");
            (rest.to_owned(), count)
        })
        .collect();
    for (n, event_id) in expected {
        let line = format!("{n} {event_id} OrderPlaced t{n}");
        assert_eq!(seen.get(&line), Some(&1), "missing or repeated: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_either_version_name_their_event_and_replay_into_the_group() {
    let env = TestEnv::new("envdlq").await;
    let old = bus_writing(&env, EnvelopeVersion::V1).await;
    let rejecting = Arc::new(AtomicBool::new(true));
    let rec = Recorder::new();
    let (rc, rj) = (rec.clone(), rejecting.clone());
    let sub = subscriber_fn(SubscriberOptions::new("g"), move |e: OrderPlaced, _ctx| {
        let (rc, rj) = (rc.clone(), rj.clone());
        async move {
            if rj.load(Ordering::SeqCst) {
                return Err(HandlerError::reject("not yet"));
            }
            rc.record(e.n.to_string());
            Ok(())
        }
    });
    let w = start_worker(&env.bus, sub).await;
    let v1 = old.publish(&OrderPlaced { n: 1 }).await.expect("publish");
    let v2 = env
        .bus
        .publish(&OrderPlaced { n: 2 })
        .await
        .expect("publish");
    let dlq = env.bus.dead_letters("orders", "g").expect("dlq");
    eventually(T, "both events dead-lettered", || async {
        dlq.count().await.expect("count") == 2
    })
    .await;
    let mut listed: Vec<(Option<String>, Option<String>)> = dlq
        .list(10)
        .await
        .expect("list")
        .into_iter()
        .map(|d| (d.event_id, d.event_type))
        .collect();
    listed.sort();
    let mut want = vec![
        (Some(v1.event_id), Some("OrderPlaced".to_owned())),
        (Some(v2.event_id), Some("OrderPlaced".to_owned())),
    ];
    want.sort();
    assert_eq!(listed, want);

    rejecting.store(false, Ordering::SeqCst);
    assert_eq!(dlq.replay_all().await.expect("replay"), 2);
    rec.wait_for(T, "both replayed events handled", |s| {
        s.get("1") == Some(&1) && s.get("2") == Some(&1)
    })
    .await;
    w.shutdown().await.expect("shutdown");
}

/// The take script dead-letters an entry whose attempts are used up before it runs (here: a
/// consumer that died holding it after two deliveries without an outcome, with one attempt
/// allowed). It must name the event of a version 2 entry, so the event's status says dead, and
/// the dead letter decodes to the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_made_before_running_names_the_version_two_event() {
    let env = TestEnv::new("envtake").await;
    let p = env
        .bus
        .publish(&OrderPlaced { n: 5 })
        .await
        .expect("publish");
    integration_tests::support::create_group(&env.bus, "orders", "g").await;
    // A consumer that read it and died: delivered twice (its first attempt is charged), never
    // acknowledged.
    integration_tests::support::read_as(&env.bus, "orders", "g", "ghost", 1).await;
    integration_tests::support::claim_for(
        &env.bus,
        "orders",
        "g",
        "ghost",
        vec![p.entry_id.as_str()],
        Some(60_000),
        Some(2),
    )
    .await;
    let opts = SubscriberOptions::new("g")
        .max_attempts(1)
        .visibility_timeout(Duration::from_millis(500))
        .track_status(true);
    let sub = subscriber_fn(opts, |_: OrderPlaced, _| async {
        Ok::<(), HandlerError>(())
    });
    let w = start_worker(&env.bus, sub).await;
    let dlq = env.bus.dead_letters("orders", "g").expect("dlq");
    eventually(T, "the dead letter", || async {
        dlq.count().await.expect("count") == 1
    })
    .await;
    eventually(T, "the event's status: dead", || async {
        env.bus
            .event_status("orders", &p.event_id)
            .await
            .expect("status")
            .get("g")
            .is_some_and(|s| s.state == bus_core::State::Dead)
    })
    .await;
    w.shutdown().await.expect("shutdown");
    let d = &dlq.list(1).await.expect("list")[0];
    assert_eq!(d.reason, "max_attempts");
    assert_eq!(d.event_id.as_deref(), Some(p.event_id.as_str()));
    assert_eq!(d.decode::<OrderPlaced>().expect("decode").n, 5);
}

/// An entry written by hand as docs/wire-format.md describes it (what a producer in another
/// language does: one `XADD` with the `e` field, JSON payload, a header) is handled by a Rust
/// subscriber with the id, type, time and header it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_written_by_hand_from_the_wire_format_is_handled() {
    let env = TestEnv::new("envwire").await;
    let key = env.bus.stream_key("orders").expect("key");
    let value = "2 0192f3a4-5b6c-7d8e-9f01-23456789abcd 1764640000000 json OrderPlaced\n{\"n\":42}";
    let _: String = env
        .bus
        .redis()
        .xadd(
            key.as_str(),
            false,
            None,
            "*",
            vec![("e", value), ("h:tenant", "acme")],
        )
        .await
        .expect("XADD");
    let rec = Recorder::new();
    let w = start_worker(&env.bus, recording_all(&rec)).await;
    rec.wait_for(T, "the hand-written event", |s| !s.is_empty())
        .await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(
        rec.snapshot().keys().next().map(String::as_str),
        Some("42 0192f3a4-5b6c-7d8e-9f01-23456789abcd OrderPlaced acme 1764640000000")
    );
}
