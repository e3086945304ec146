//! Metrics through the `metrics` facade (including re-created groups and entries deleted while
//! pending). One test per binary:
//! the recorder is process-global.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Job;
use std::time::Duration;

use bus_core::{subscriber_fn, HandlerError, SubscriberOptions};
use fred::prelude::*;
use integration_tests::{eventually, TestEnv};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("install the recorder");
    // Snapshots return counter deltas (they reset): keep running totals.
    let totals = std::sync::Mutex::new(Vec::<(String, Vec<(String, String)>, u64)>::new());
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        let mut totals = totals.lock().expect("lock");
        for (k, _, _, v) in snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(c) = v {
                let labels: Vec<(String, String)> = k
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                let name = k.key().name().to_owned();
                match totals
                    .iter_mut()
                    .find(|(n, l, _)| *n == name && *l == labels)
                {
                    Some(t) => t.2 += c,
                    None => totals.push((name, labels, c)),
                }
            }
        }
        totals
            .iter()
            .filter(|(n, l, _)| {
                n == name && label.is_none_or(|(lk, lv)| l.iter().any(|(k, v)| k == lk && v == lv))
            })
            .map(|(_, _, c)| *c)
            .sum()
    };

    let env = TestEnv::new("metrics").await;
    let opts = SubscriberOptions::new("g")
        .max_attempts(2)
        .backoff_min(Duration::from_millis(20))
        .block_timeout(Duration::from_millis(200));
    let w = env
        .bus
        .worker()
        .subscribe(subscriber_fn(opts, |j: Job, _| async move {
            match j.n {
                0 => Ok(()),
                1 => Err(HandlerError::reject("no")),
                _ => Err(HandlerError::retry("always")),
            }
        }))
        .start()
        .await
        .expect("start");
    for n in 0..3 {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    eventually(Duration::from_secs(30), "the outcomes", || async {
        counter("streambus_dead_lettered_total", None) == 2
    })
    .await;
    // A vanished stream and group are counted when re-created.
    let key = env.bus.stream_key("jobs").expect("key");
    let _: i64 = env.bus.redis().del(key.as_str()).await.expect("DEL");
    env.bus.publish(&Job { n: 0 }).await.expect("publish");
    eventually(
        Duration::from_secs(30),
        "the group to be re-created",
        || async {
            counter("streambus_group_recreated_total", None) >= 1
                && counter("streambus_handled_total", None) == 2
        },
    )
    .await;
    w.shutdown().await.expect("shutdown");

    assert_eq!(
        counter("streambus_published_total", Some(("stream", "jobs"))),
        4
    );
    assert_eq!(counter("streambus_handled_total", Some(("group", "g"))), 2);
    assert_eq!(
        counter(
            "streambus_dead_lettered_total",
            Some(("reason", "rejected"))
        ),
        1
    );
    assert_eq!(
        counter(
            "streambus_dead_lettered_total",
            Some(("reason", "max_attempts"))
        ),
        1
    );
    assert_eq!(counter("streambus_retried_total", None), 1);
    assert_eq!(counter("streambus_failed_total", None), 2);
}
