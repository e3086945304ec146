//! Replaying dead letters while the group keeps failing, replays of undecodable entries, and the
//! Pub/Sub subscriptions behind `wait_for` (cancelled waiters, subscribe/unsubscribe races).

use bus_core::testing::RedisAccess;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bus_core::{subscriber_fn, Bus, Event, HandlerError, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::support::{self, start_worker};
use integration_tests::{eventually, Recorder, TestEnv};
use serde::{Deserialize, Serialize};

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "x")]
struct Ping {
    n: u64,
}

async fn dead_letter_count(bus: &Bus, group: &str) -> u64 {
    support::dead_letter_count(bus, "x", group).await
}

async fn pending(bus: &Bus, group: &str) -> u64 {
    support::pending(bus, "x", group).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_ends_while_the_group_rejects_everything_again_at_once() {
    const N: u64 = 300;
    let env = TestEnv::new("replayall").await;
    let rec = Recorder::new();
    let rc = rec.clone();
    let rejecting = subscriber_fn(SubscriberOptions::new("g"), move |e: Ping, _ctx| {
        let rc = rc.clone();
        async move {
            rc.record(e.n.to_string());
            Err::<(), _>(HandlerError::reject("no"))
        }
    });
    let w = start_worker(&env.bus, rejecting).await;
    let events: Vec<Ping> = (0..N).map(|n| Ping { n }).collect();
    env.bus.publish_batch(&events).await.expect("publish");
    let dlq = env.bus.dead_letters("x", "g").expect("dlq");
    eventually(T, "every event dead-lettered", || async {
        dlq.count().await.expect("count") == N
    })
    .await;

    // Every replayed event comes straight back as a new dead letter; replay_all must still end
    // and replay exactly what was there when it started.
    let replayed = tokio::time::timeout(T, dlq.replay_all())
        .await
        .expect("replay_all did not end while the group kept rejecting")
        .expect("replay_all");
    assert_eq!(replayed, N);

    // Each replay was handled (and rejected) once more by the group.
    rec.wait_for(T, "a second delivery of every event", |s| {
        s.len() == N as usize && s.values().all(|&c| c == 2)
    })
    .await;
    eventually(T, "every replay dead-lettered again", || async {
        dlq.count().await.expect("count") == N && pending(&env.bus, "g").await == 0
    })
    .await;
    w.shutdown().await.expect("shutdown");
    assert!(
        rec.snapshot().values().all(|&c| c == 2),
        "an event was replayed more than once: {:?}",
        rec.snapshot()
    );
    assert!(dlq
        .list(N as usize)
        .await
        .expect("list")
        .iter()
        .all(|d| d.reason == "rejected" && d.attempts == 1));
}

async fn xadd_raw(bus: &Bus, fields: &[(&str, &str)]) -> String {
    let key = bus.stream_key("x").expect("key");
    let mut args = vec![Value::from(key.as_str()), Value::from("*")];
    for (k, v) in fields {
        args.push(Value::from(*k));
        args.push(Value::from(*v));
    }
    bus.redis()
        .custom(
            fred::types::CustomCommand::new_static("XADD", None, false),
            args,
        )
        .await
        .expect("XADD")
}

/// The group's last-delivered id in the normal lane.
async fn last_delivered(bus: &Bus, group: &str) -> String {
    support::last_delivered(bus, "x", group)
        .await
        .expect("group info")
}

fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("entry id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_dead_letter_is_replayed_to_its_group_only() {
    let env = TestEnv::new("replayto").await;
    let ok = |group: &str| {
        subscriber_fn(SubscriberOptions::new(group), |_e: Ping, _ctx| async move {
            Ok::<_, HandlerError>(())
        })
    };
    let mut workers = Vec::new();
    for group in ["A", "B"] {
        let w = env.bus.worker().subscribe(ok(group)).start().await;
        workers.push(w.unwrap_or_else(|e| panic!("start {group}: {e:?}")));
    }
    let garbage = xadd_raw(&env.bus, &[("v", "99"), ("foo", "bar")]).await;
    eventually(T, "a decode dead letter in both groups", || async {
        dead_letter_count(&env.bus, "A").await == 1 && dead_letter_count(&env.bus, "B").await == 1
    })
    .await;
    let dla = env.bus.dead_letters("x", "A").expect("dlq");
    let first = dla.list(10).await.expect("list");
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].reason.as_str(), first[0].entry_id.as_str()),
        ("decode", garbage.as_str())
    );

    assert_eq!(dla.replay_all().await.expect("replay"), 1);
    // The replay is the newest entry of the stream, addressed to A.
    let key = env.bus.stream_key("x").expect("key");
    let newest: Vec<(String, HashMap<String, String>)> = env
        .bus
        .redis()
        .xrevrange(key.as_str(), "+", "-", Some(1))
        .await
        .expect("XREVRANGE");
    let (replay_id, fields) = newest.into_iter().next().expect("the replayed entry");
    assert_ne!(replay_id, garbage);
    assert_eq!(
        fields.get("to").map(String::as_str),
        Some("A"),
        "{fields:?}"
    );

    // A fails to decode it again: a new dead letter for the replayed entry.
    eventually(T, "A's new dead letter", || async {
        let dl = dla.list(10).await.expect("list");
        dl.len() == 1 && dl[0].entry_id == replay_id
    })
    .await;
    // B has read past the replay and settled it (nothing pending) …
    eventually(T, "B past the replay", || async {
        entry_id(&last_delivered(&env.bus, "B").await) >= entry_id(&replay_id)
            && pending(&env.bus, "B").await == 0
    })
    .await;
    // … without dead-lettering it: it was never B's.
    let dlb = env.bus.dead_letters("x", "B").expect("dlq").list(10).await;
    let dlb = dlb.expect("list");
    assert_eq!(dlb.len(), 1, "{dlb:#?}");
    assert_eq!(dlb[0].entry_id, garbage);
    for (group, w) in ["A", "B"].into_iter().zip(workers) {
        let stopped = w.shutdown().await;
        stopped.unwrap_or_else(|e| panic!("shutdown {group}: {e:?}"));
    }
}

/// The waiters' notification channel of an event (`<prefix>:{x}:done:<event id>`).
fn done_channel(env: &TestEnv, event_id: &str) -> String {
    format!("{}:{{x}}:done:{event_id}", env.prefix)
}

/// Subscribers of each channel, as the server counts them.
async fn numsub(env: &TestEnv, channels: &[String]) -> Vec<u64> {
    let reply: Value = env
        .bus
        .redis()
        .pubsub_numsub(channels.to_vec())
        .await
        .expect("PUBSUB NUMSUB");
    let counts: HashMap<String, u64> = match reply {
        Value::Array(flat) => flat
            .chunks(2)
            .map(|kv| {
                (
                    kv[0].as_string().expect("channel"),
                    kv[1].as_u64().expect("count"),
                )
            })
            .collect(),
        Value::Map(m) => m
            .inner()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.into_string().expect("channel"),
                    v.as_u64().expect("count"),
                )
            })
            .collect(),
        other => panic!("unexpected PUBSUB NUMSUB reply {other:?}"),
    };
    channels
        .iter()
        .map(|c| counts.get(c).copied().unwrap_or(0))
        .collect()
}

/// Channels under this test's prefix with at least one subscriber.
async fn live_channels(env: &TestEnv) -> Vec<String> {
    env.bus
        .redis()
        .pubsub_channels(format!("{}:*", env.prefix))
        .await
        .expect("PUBSUB CHANNELS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_release_their_subscriptions() {
    const N: usize = 50;
    let env = TestEnv::new("unsub").await;
    let ids: Vec<String> = (0..N).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let channels: Vec<String> = ids.iter().map(|id| done_channel(&env, id)).collect();

    // Dropped by a timeout: some while subscribing, most while waiting.
    let cancelled = futures::future::join_all(ids.iter().map(|id| {
        tokio::time::timeout(
            Duration::from_millis(50),
            env.bus.wait_for::<Ping>(id, "g", T),
        )
    }))
    .await;
    assert!(cancelled.iter().all(Result::is_err), "{cancelled:?}");
    eventually(T, "no subscription left after timeouts", || async {
        live_channels(&env).await.is_empty()
            && numsub(&env, &channels).await.iter().all(|&n| n == 0)
    })
    .await;

    // Aborted once every waiter is known to be subscribed, i.e. waiting.
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let bus = env.bus.clone();
            let id = id.clone();
            tokio::spawn(async move { bus.wait_for::<Ping>(&id, "g", T).await })
        })
        .collect();
    eventually(T, "every waiter subscribed", || async {
        numsub(&env, &channels).await.iter().all(|&n| n == 1)
    })
    .await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.expect_err("aborted").is_cancelled());
    }
    eventually(T, "no subscription left after aborts", || async {
        live_channels(&env).await.is_empty()
    })
    .await;

    // The reference counts are intact: a new waiter subscribes again, and its end unsubscribes.
    let bus = env.bus.clone();
    let id = ids[0].clone();
    let again = tokio::spawn(async move { bus.wait_for::<Ping>(&id, "g", T).await });
    eventually(T, "the new waiter subscribed", || async {
        numsub(&env, &channels[..1]).await == [1]
    })
    .await;
    again.abort();
    assert!(again.await.expect_err("aborted").is_cancelled());
    eventually(T, "its subscription released", || async {
        live_channels(&env).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_follows_one_that_ended_is_still_subscribed_and_woken() {
    const ROUNDS: usize = 200;
    let env = TestEnv::new("subrace").await;
    let p = env.bus.publish(&Ping { n: 1 }).await.expect("publish");
    let chan = vec![done_channel(&env, &p.event_id)];
    let spawn_waiter = |timeout: Duration| {
        let bus = env.bus.clone();
        let id = p.event_id.clone();
        tokio::spawn(async move { bus.wait_for::<Ping>(&id, "g", timeout).await })
    };

    // Each round, on the same event: a new waiter starts while the previous one is cancelled, and
    // a waiter with no time to wait subscribes, reads and unsubscribes at the same moment.
    let mut current = spawn_waiter(T);
    for _ in 0..ROUNDS {
        let next = spawn_waiter(T);
        let quick = spawn_waiter(Duration::ZERO);
        current.abort();
        let quick = quick.await.expect("join");
        assert!(
            matches!(quick, Err(bus_core::Error::Timeout(_))),
            "{quick:?}"
        );
        assert!(current.await.expect_err("aborted").is_cancelled());
        current = next;
    }
    eventually(T, "the last waiter subscribed", || async {
        numsub(&env, &chan).await == [1]
    })
    .await;
    assert!(!current.is_finished(), "the event is not done yet");

    // Complete the event: the last waiter is woken with the outcome.
    let w = start_worker(
        &env.bus,
        subscriber_fn(
            SubscriberOptions::new("g").track_status(true),
            |e: Ping, _ctx| async move { Ok::<_, HandlerError>(e.n) },
        ),
    )
    .await;
    let started = Instant::now();
    let st = current.await.expect("join").expect("wait_for");
    assert_eq!(st.state, bus_core::State::Succeeded);
    assert_eq!(st.result::<u64>().expect("result"), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the last waiter took {:?}",
        started.elapsed()
    );
    w.shutdown().await.expect("shutdown");
    eventually(T, "no subscription left", || async {
        live_channels(&env).await.is_empty()
    })
    .await;
}
