//! Test harness for Streambus integration tests.
//!
//! Redis comes from, in order: `REDIS_URL` if set; else a throwaway `redis-server` from `PATH`
//! started on a free loopback port (one per test binary, killed when the binary exits); else, with
//! the cargo feature `testcontainers` and a Docker engine, a `redis:7.2-alpine` container.
//! Every test gets its own key prefix and deletes its keys when done, so tests run in parallel
//! against one server and never need `FLUSHALL`.

use bus_core::testing::RedisAccess;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use bus_core::testing::{
    delete_prefix, free_port, keys_with_prefix, redis_server_available, unique_prefix, RedisServer,
};
use bus_core::{Bus, BusBuilder};

pub mod fixtures;
pub mod procs;
pub mod proxy;
pub mod support;
pub mod worker;

enum Source {
    Env(String),
    Spawned(RedisServer),
    #[cfg(feature = "testcontainers")]
    Container(String),
}

impl Source {
    fn url(&self) -> String {
        match self {
            Source::Env(u) => u.clone(),
            Source::Spawned(s) => s.url(),
            #[cfg(feature = "testcontainers")]
            Source::Container(u) => u.clone(),
        }
    }
}

static REDIS: OnceLock<Result<Source, String>> = OnceLock::new();

fn pick_source() -> Result<Source, String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        if !url.is_empty() {
            return Ok(Source::Env(url));
        }
    }
    if redis_server_available() {
        return RedisServer::start()
            .map(Source::Spawned)
            .map_err(|e| format!("cannot start redis-server: {e}"));
    }
    #[cfg(feature = "testcontainers")]
    {
        return start_container().map(Source::Container);
    }
    #[allow(unreachable_code)]
    Err("no Redis for the tests: set REDIS_URL, install redis-server (apt-get install redis-server), \
         or build with --features testcontainers where Docker runs"
        .into())
}

#[cfg(feature = "testcontainers")]
fn start_container() -> Result<String, String> {
    use testcontainers_modules::redis::{Redis, REDIS_PORT};
    use testcontainers_modules::testcontainers::{runners::AsyncRunner, ImageExt};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            match Redis::default().with_tag("7.2-alpine").start().await {
                Ok(c) => {
                    let url = async {
                        let host = c.get_host().await.map_err(|e| e.to_string())?;
                        let port = c
                            .get_host_port_ipv4(REDIS_PORT)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(format!("redis://{host}:{port}"))
                    }
                    .await;
                    let _ = tx.send(url);
                    // Keep the container for the life of the test binary.
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start a Redis container: {e}")));
                }
            }
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

/// The URL of the Redis the tests use (see the crate docs). Panics with a how-to when there is none.
pub fn redis_url() -> String {
    init_tracing();
    match REDIS.get_or_init(pick_source) {
        Ok(s) => s.url(),
        Err(e) => panic!("{e}"),
    }
}

/// Logs to the test output, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// One test's view of Redis: a unique prefix and a bus on it. Deletes its keys on drop.
#[derive(Debug)]
pub struct TestEnv {
    pub url: String,
    pub prefix: String,
    pub bus: Bus,
}

impl TestEnv {
    /// A new prefix `t-<label>-<random>` and a bus on it.
    pub async fn new(label: &str) -> TestEnv {
        Self::with_builder(label, |b| b).await
    }

    /// As [`new`](Self::new), with builder changes (codec, payload limit…).
    pub async fn with_builder(label: &str, f: impl FnOnce(BusBuilder) -> BusBuilder) -> TestEnv {
        let url = redis_url();
        let prefix = unique_prefix(&format!("t-{label}"));
        let bus = f(Bus::builder().prefix(prefix.clone()))
            .connect(&url)
            .await
            .expect("connect to the test Redis");
        TestEnv { url, prefix, bus }
    }

    /// Another bus (its own connection) on the same prefix: a second "process".
    pub async fn another_bus(&self) -> Bus {
        Bus::builder()
            .prefix(self.prefix.clone())
            .connect(&self.url)
            .await
            .expect("connect to the test Redis")
    }

    /// Starts a worker on this test's bus with the one subscriber `sub`.
    pub async fn start<S: bus_core::Subscriber>(&self, sub: S) -> bus_core::WorkerHandle {
        self.bus
            .worker()
            .subscribe(sub)
            .start()
            .await
            .expect("start the worker")
    }

    /// A pool of `n` workers, each on a bus of its own (as separate processes would be), each
    /// with a subscriber made by `make`.
    pub async fn pool<S: bus_core::Subscriber>(
        &self,
        n: usize,
        mut make: impl FnMut() -> S,
    ) -> Vec<bus_core::WorkerHandle> {
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let bus = self.another_bus().await;
            workers.push(
                bus.worker()
                    .subscribe(make())
                    .start()
                    .await
                    .expect("start a pool worker"),
            );
        }
        workers
    }

    /// All keys under this test's prefix.
    pub async fn keys(&self) -> Vec<String> {
        keys_with_prefix(&self.bus).await.expect("SCAN")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let bus = self.bus.clone();
        // Runs on its own thread and runtime, so it works from async tests and after panics.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), delete_prefix(&bus)).await;
                });
            }
        })
        .join();
    }
}

/// Counts things seen by handlers and lets a test await a condition on them without sleeping.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<(Mutex<HashMap<String, u64>>, tokio::sync::Notify)>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one to `key`'s count.
    pub fn record(&self, key: impl Into<String>) {
        if let Ok(mut m) = self.inner.0.lock() {
            *m.entry(key.into()).or_default() += 1;
        }
        self.inner.1.notify_waiters();
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.inner.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// Waits until `cond` holds on the counts; panics with the counts after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&HashMap<String, u64>) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.1.notified();
            if cond(&self.snapshot()) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let snap = self.snapshot();
                panic!(
                    "timed out after {timeout:?} waiting for {what}: {} keys, total {}",
                    snap.len(),
                    snap.values().sum::<u64>()
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

/// Entries of `stream` delivered to `group` and not yet acknowledged (normal lane), or `None`
/// when Redis does not answer (or the group does not exist).
pub async fn pending_count(bus: &Bus, stream: &str, group: &str) -> Option<u64> {
    use fred::prelude::*;
    let key = bus.stream_key(stream).ok()?;
    let v: fred::types::Value = bus.redis().xpending(key.as_str(), group, ()).await.ok()?;
    match v {
        fred::types::Value::Array(a) => a.first().and_then(fred::types::Value::as_u64),
        _ => None,
    }
}

/// Polls an async condition (for state only Redis knows, like pending counts) until it holds.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
