//! The blocking mode (handlers on Tokio's blocking pool) and the watch that reports async
//! handlers holding a runtime thread. The process-wide metrics recorder is used by one test only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{subscriber_fn, HandlerError, State, SubscriberOptions};
use integration_tests::fixtures::Job;
use integration_tests::support::Gauge;
use integration_tests::{eventually, Recorder, TestEnv};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const T: Duration = Duration::from_secs(30);

/// On a single-threaded runtime, four handlers that each block their thread for 400 ms run at
/// once in blocking mode, and they still `.await` (timers, the context) as async code.
#[tokio::test]
async fn blocking_mode_runs_handlers_beside_each_other_off_the_runtime_thread() {
    let env = TestEnv::new("blocking-mode").await;
    for n in 0..4 {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    let gauge = Arc::new(Gauge::default());
    let rec = Recorder::new();
    let (g, r) = (gauge.clone(), rec.clone());
    let opts = SubscriberOptions::new("g").concurrency(4).blocking(true);
    let w = env
        .start(subscriber_fn(opts, move |j: Job, ctx| {
            let (g, r) = (g.clone(), r.clone());
            async move {
                let _in = g.enter();
                std::thread::sleep(Duration::from_millis(400));
                tokio::time::sleep(Duration::from_millis(1)).await;
                r.record(format!("{} {}", j.n, ctx.group()));
                Ok::<_, HandlerError>(())
            }
        }))
        .await;
    rec.wait_for(T, "all four", |m| m.len() == 4).await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(
        gauge.max(),
        4,
        "the blocking handlers ran one after another"
    );
    assert_eq!(rec.snapshot().get("0 g"), Some(&1));
}

/// Sets its flag when dropped: tells that a handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Results, the handler timeout and panics work in blocking mode as they do in async mode, and
/// a handler hung in an `.await` is dropped (its thread freed) once its timeout passes. Group
/// `g` keeps results and panics on event 2; group `t` has a 300 ms handler timeout, blocks its
/// thread for 1 s on event 1 and hangs on event 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_mode_keeps_results_timeouts_and_panics() {
    let env = TestEnv::new("blocking-outcomes").await;
    let opts = |group: &str| {
        SubscriberOptions::new(group)
            .blocking(true)
            .track_status(true)
            .max_attempts(1)
    };
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let results = subscriber_fn(opts("g"), |j: Job, _| async move {
        if j.n == 2 {
            panic!("boom {}", j.n);
        }
        std::thread::sleep(Duration::from_millis(20));
        Ok::<_, HandlerError>(j.n * 10)
    });
    let timeouts = subscriber_fn(
        opts("t").handler_timeout(Duration::from_millis(300)),
        move |j: Job, _| {
            let flag = flag.clone();
            async move {
                match j.n {
                    1 => std::thread::sleep(Duration::from_secs(1)),
                    3 => {
                        let _f = DropFlag(flag);
                        std::future::pending::<()>().await;
                    }
                    _ => {}
                }
                Ok::<_, HandlerError>(())
            }
        },
    );
    let w = env
        .bus
        .worker()
        .subscribe(results)
        .subscribe(timeouts)
        .start()
        .await
        .expect("start");
    let tenfold: u64 = env
        .bus
        .request(&Job { n: 7 }, "g", T)
        .await
        .expect("result");
    assert_eq!(tenfold, 70);
    let mut events = Vec::new();
    for n in 1..=3 {
        events.push(env.bus.publish(&Job { n }).await.expect("publish").event_id);
    }
    let status = |group: &'static str, i: usize| {
        let (bus, id) = (env.bus.clone(), events[i].clone());
        async move { bus.wait_for::<Job>(&id, group, T).await.expect("status") }
    };
    let panicked = status("g", 1).await;
    assert_eq!(panicked.state, State::Dead);
    assert!(
        panicked
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("boom 2"),
        "{panicked:?}"
    );
    for i in [0, 2] {
        let st = status("t", i).await;
        assert_eq!(st.state, State::Dead);
        assert!(
            st.error
                .as_deref()
                .unwrap_or_default()
                .contains("timed out"),
            "{st:?}"
        );
    }
    eventually(T, "the hung handler's future to be dropped", || async {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    for (group, want) in [
        ("g", vec!["max_attempts"]),
        ("t", vec!["timeout", "timeout"]),
    ] {
        let dlq = env.bus.dead_letters("jobs", group).expect("dlq");
        let reasons: Vec<String> = dlq
            .list(10)
            .await
            .expect("list")
            .into_iter()
            .map(|d| d.reason)
            .collect();
        assert_eq!(reasons, want, "group {group}");
    }
    w.shutdown().await.expect("shutdown");
}

/// Counter total of `name` for group `group` across snapshots (snapshots return deltas).
struct Counters {
    snapshotter: metrics_util::debugging::Snapshotter,
    totals: std::sync::Mutex<Vec<(String, String, u64)>>,
}

impl Counters {
    fn install() -> Counters {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("install the recorder");
        Counters {
            snapshotter,
            totals: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn get(&self, name: &str, group: &str) -> u64 {
        let mut totals = self.totals.lock().expect("lock");
        for (k, _, _, v) in self.snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(c) = v {
                let g = k
                    .key()
                    .labels()
                    .find(|l| l.key() == "group")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                let n = k.key().name().to_owned();
                match totals.iter_mut().find(|(tn, tg, _)| *tn == n && *tg == g) {
                    Some(t) => t.2 += c,
                    None => totals.push((n, g, c)),
                }
            }
        }
        totals
            .iter()
            .filter(|(n, g, _)| n == name && g == group)
            .map(|(_, _, c)| *c)
            .sum()
    }
}

/// An async handler that blocks its thread past the threshold is counted (once per stretch,
/// also while it still blocks); one that awaits, or blocks in blocking mode, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_blocking_a_runtime_thread_are_reported() {
    let counters = Counters::install();
    let env = TestEnv::new("blocking-watch").await;
    let blocks = |opts: SubscriberOptions| {
        subscriber_fn(opts, |j: Job, _| async move {
            std::thread::sleep(Duration::from_millis(j.n));
            Ok::<_, HandlerError>(())
        })
    };
    let awaits = subscriber_fn(SubscriberOptions::new("awaits"), |j: Job, _| async move {
        tokio::time::sleep(Duration::from_millis(j.n)).await;
        Ok::<_, HandlerError>(())
    });
    let w = env
        .bus
        .worker()
        .warn_blocking_after(Some(Duration::from_millis(100)))
        .subscribe(blocks(SubscriberOptions::new("blocks")))
        .subscribe(blocks(SubscriberOptions::new("pooled").blocking(true)))
        .subscribe(awaits)
        .start()
        .await
        .expect("start");
    // Two long stretches and a short one (under the threshold).
    for n in [400, 5, 400] {
        env.bus.publish(&Job { n }).await.expect("publish");
    }
    eventually(T, "every group to handle all three", || async {
        ["blocks", "pooled", "awaits"]
            .iter()
            .all(|g| counters.get("streambus_handled_total", g) == 3)
    })
    .await;
    w.shutdown().await.expect("shutdown");
    assert_eq!(
        counters.get("streambus_handler_blocking_total", "blocks"),
        2
    );
    assert_eq!(
        counters.get("streambus_handler_blocking_total", "pooled"),
        0
    );
    assert_eq!(
        counters.get("streambus_handler_blocking_total", "awaits"),
        0
    );
}
