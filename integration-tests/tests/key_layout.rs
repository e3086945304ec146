//! Key layout: no two groups or lanes share a side key, names with glob characters are matched
//! literally, and attempt records written under the 0.1 layout are adopted.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Job;
use std::time::Duration;

use bus_core::{Bus, HandlerError, Priority, PublishOptions, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::support::start_worker;
use integration_tests::{eventually, Recorder, TestEnv};

const T: Duration = Duration::from_secs(10);

/// Publishes `job` on `lane`, then moves the entry to the explicit id `id` (same fields), so that
/// two lanes can hold entries with the same id.
async fn publish_at(env: &TestEnv, job: &Job, lane: Priority, id: &str) {
    let p = env
        .bus
        .publish_with(job, PublishOptions::new().priority(lane))
        .await
        .expect("publish");
    let key = match lane {
        Priority::Normal => env.bus.stream_key("jobs").expect("key"),
        other => format!(
            "{}:{}",
            env.bus.stream_key("jobs").expect("key"),
            other.as_str()
        ),
    };
    let entries: Vec<(String, Vec<(String, Value)>)> = env
        .bus
        .redis()
        .xrange(key.as_str(), p.entry_id.as_str(), p.entry_id.as_str(), None)
        .await
        .expect("XRANGE");
    let (_, fields) = entries.into_iter().next().expect("the published entry");
    let _: u64 = env
        .bus
        .redis()
        .xdel(key.as_str(), p.entry_id.as_str())
        .await
        .expect("XDEL");
    let _: String = env
        .bus
        .redis()
        .xadd(key.as_str(), false, None, id, fields)
        .await
        .expect("XADD with an explicit id");
}

/// Group `billing` and group `billing:high` each fail an entry with the same id, `billing` in the
/// high lane (retry in an hour) and `billing:high` in the normal lane (retry at once, then
/// success). Each group's attempt record must stay its own. Under the 0.1 layout both used
/// `retry:billing:high`: `billing:high`'s retry overwrote `billing`'s record and its success
/// deleted it, so `billing`'s backoff and attempt count were gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_whose_names_end_like_a_lane_keep_their_own_attempt_records() {
    let env = TestEnv::new("collide").await;
    let id = "9000000000000-1";
    publish_at(&env, &Job { n: 1 }, Priority::High, id).await;
    publish_at(&env, &Job { n: 2 }, Priority::Normal, id).await;

    let failed = Recorder::new();
    let f = failed.clone();
    let billing = start_worker(
        &env.bus,
        bus_core::subscriber_fn(SubscriberOptions::new("billing"), move |j: Job, _| {
            let f = f.clone();
            async move {
                f.record(j.n.to_string());
                if j.n == 1 {
                    return Err(HandlerError::retry_after(
                        Duration::from_secs(3600),
                        "try again in an hour",
                    ));
                }
                Ok(())
            }
        }),
    )
    .await;
    let high_records = format!("{}:{{jobs}}:retry:high:billing", env.prefix);
    let billing_record = || async {
        let r: Option<String> = env
            .bus
            .redis()
            .hget(high_records.as_str(), id)
            .await
            .expect("HGET");
        r
    };
    eventually(
        T,
        "billing's retry record for the high-lane entry",
        || async { billing_record().await.is_some() && failed.snapshot().contains_key("1") },
    )
    .await;

    let handled = Recorder::new();
    let h = handled.clone();
    let other = start_worker(
        &env.bus,
        bus_core::subscriber_fn(
            SubscriberOptions::new("billing:high"),
            move |j: Job, ctx| {
                let h = h.clone();
                async move {
                    h.record(j.n.to_string());
                    if j.n == 2 && ctx.attempt() == 1 {
                        return Err(HandlerError::retry_after(
                            Duration::from_millis(50),
                            "try again soon",
                        ));
                    }
                    Ok(())
                }
            },
        ),
    )
    .await;
    eventually(T, "billing:high handles both of its entries", || async {
        let s = handled.snapshot();
        s.get("1") == Some(&1) && s.get("2") == Some(&2)
    })
    .await;
    eventually(T, "billing:high has nothing pending", || async {
        integration_tests::support::pending(&env.bus, "jobs", "billing:high").await == 0
    })
    .await;
    // billing's retry is still waiting, untouched by the other group.
    assert!(
        billing_record().await.is_some(),
        "billing's attempt record was lost"
    );
    assert_eq!(failed.snapshot().get("1"), Some(&1));
    other.shutdown().await.expect("shutdown");
    billing.shutdown().await.expect("shutdown");
}

/// `Bus::streams` matches the prefix literally: glob characters in it neither hide the bus's own
/// streams nor reveal another prefix's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_listed_for_a_prefix_with_glob_characters() {
    let base = bus_core::testing::unique_prefix("glob");
    let url = integration_tests::redis_url();
    let bracket = Bus::builder()
        .prefix(format!("{base}[x]"))
        .connect(&url)
        .await
        .expect("connect");
    let star = Bus::builder()
        .prefix(format!("{base}*"))
        .connect(&url)
        .await
        .expect("connect");
    let plain = Bus::builder()
        .prefix(format!("{base}-plain"))
        .connect(&url)
        .await
        .expect("connect");
    for bus in [&bracket, &plain] {
        bus.publish(&Job { n: 1 }).await.expect("publish");
    }
    let listed = bracket.streams().await.expect("streams");
    assert_eq!(listed, vec!["jobs".to_owned()], "prefix with brackets");
    let listed = star.streams().await.expect("streams");
    assert!(
        listed.is_empty(),
        "a '*' prefix saw other prefixes: {listed:?}"
    );
    for bus in [&bracket, &star, &plain] {
        bus_core::testing::delete_prefix(bus)
            .await
            .expect("clean up");
    }
}

/// A worker adopts the attempt records a 0.1 worker left under the old key: the entry waiting for
/// its retry keeps its backoff instead of running at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_records_under_the_old_key_are_adopted_at_start() {
    let env = TestEnv::new("adopt").await;
    let p = env.bus.publish(&Job { n: 7 }).await.expect("publish");
    integration_tests::support::create_group(&env.bus, "jobs", "g").await;
    integration_tests::support::read_as(&env.bus, "jobs", "g", "old-worker", 10).await;
    // What a 0.1 worker wrote after a failed attempt: retry in 2 s (Redis clock), one attempt
    // charged.
    let old_key = format!("{}:{{jobs}}:retry:g", env.prefix);
    let due = integration_tests::support::redis_now_ms(&env.bus).await + 2000;
    let record = format!("2|r|1||{due}|boom");
    let _: u64 = env
        .bus
        .redis()
        .hset(old_key.as_str(), (p.entry_id.as_str(), record.as_str()))
        .await
        .expect("HSET");

    let ran_at = std::sync::Arc::new(std::sync::Mutex::new(None::<(u64, u32)>));
    let r = ran_at.clone();
    let w = start_worker(
        &env.bus,
        bus_core::subscriber_fn(
            SubscriberOptions::new("g").visibility_timeout(Duration::from_millis(200)),
            move |_j: Job, ctx| {
                let r = r.clone();
                async move {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_millis() as u64;
                    *r.lock().expect("lock") = Some((now, ctx.attempt()));
                    Ok::<_, HandlerError>(())
                }
            },
        ),
    )
    .await;
    let exists: u64 = env
        .bus
        .redis()
        .exists(old_key.as_str())
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the old key was not renamed");
    eventually(T, "the handler ran", || async {
        ran_at.lock().expect("lock").is_some()
    })
    .await;
    let (ran, attempt) = ran_at.lock().expect("lock").unwrap_or_default();
    assert_eq!(attempt, 2, "the adopted record charged one attempt");
    assert!(
        ran >= due,
        "the entry ran {} ms before its retry was due",
        due - ran
    );
    w.shutdown().await.expect("shutdown");
}
