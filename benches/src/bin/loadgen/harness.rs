//! The run (where to connect, the unique prefix, every bus made, the clean-up), the raw side of a
//! phase, and the helpers the workloads share: backlogs, timed drains by a worker, progress lines.

use bus_core::testing::RedisAccess;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{BoxError, BoxResult, CpuMeter, CpuUse, Load};
use bus_core::testing::delete_prefix;
use bus_core::{subscriber_fn, Bus, Context, Event, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use futures::{StreamExt, TryStreamExt};

use crate::commandstats::{CmdMeter, Stats};

/// The run: where to connect, the unique prefix, and every bus made (for clean-up).
pub(crate) struct Run {
    url: String,
    base: String,
    buses: Vec<Bus>,
}

impl Run {
    pub(crate) fn new(url: String, base: String) -> Self {
        Self {
            url,
            base,
            buses: Vec::new(),
        }
    }

    /// The Redis URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The unique prefix every bus's prefix starts with.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// A bus whose keys live under `<base>-<name>:`.
    pub(crate) async fn bus(&mut self, name: &str) -> BoxResult<Bus> {
        let bus = Bus::builder()
            .prefix(format!("{}-{name}", self.base))
            .connect(&self.url)
            .await?;
        self.buses.push(bus.clone());
        Ok(bus)
    }

    pub(crate) async fn cleanup(&self) -> BoxResult<u64> {
        let mut deleted = 0;
        for bus in &self.buses {
            deleted += delete_prefix(bus).await?;
        }
        for bus in &self.buses {
            bus.close().await;
        }
        Ok(deleted)
    }
}

/// The raw side of a phase: its own bus (for the key and clean-up) and its own connection.
pub(crate) struct RawSide {
    pub(crate) client: Client,
    pub(crate) key: String,
    bus: Bus,
}

impl RawSide {
    pub(crate) async fn new(run: &mut Run, name: &str) -> BoxResult<Self> {
        let bus = run.bus(name).await?;
        let key = bus.stream_key(Load::STREAM)?;
        let client = bus.redis().clone_new();
        client.init().await?;
        Ok(Self { bus, client, key })
    }

    pub(crate) async fn clear(&self) -> BoxResult<()> {
        self.client.del::<u64, _>(self.key.as_str()).await?;
        Ok(())
    }

    pub(crate) async fn close(self) -> BoxResult<()> {
        let _ = self.client.quit().await;
        delete_prefix(&self.bus).await?;
        Ok(())
    }
}

pub(crate) fn progress(msg: &str) {
    eprintln!("[loadgen] {msg}");
}

pub(crate) async fn redis_version(bus: &Bus) -> Option<String> {
    let info: String = bus
        .redis()
        .info(Some(fred::types::InfoKind::Server))
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// Resets the process's peak RSS (`VmHWM`) to the current RSS (Linux ≥ 4.0); false if refused.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Publishes `0..n` with `publish_batch` in batches of `batch`, `in_flight` batches at a time.
pub(crate) async fn publish_batches(
    bus: &Bus,
    n: u64,
    batch: u64,
    in_flight: usize,
) -> BoxResult<()> {
    let starts: Vec<u64> = (0..n).step_by(batch as usize).collect();
    futures::stream::iter(starts)
        .map(|start| async move {
            let events: Vec<Load> = (start..(start + batch).min(n)).map(Load::new).collect();
            bus.publish_batch(&events).await?;
            Ok::<(), BoxError>(())
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await
}

/// An untimed backlog of `n` events.
pub(crate) async fn backlog(bus: &Bus, n: u64) -> BoxResult<()> {
    publish_batches(bus, n, 1_000, 4).await
}

async fn xpending_count(client: &Client, key: &str, group: &str) -> BoxResult<u64> {
    let v: Value = client.xpending(key, group, ()).await?;
    match v {
        Value::Array(parts) => parts
            .first()
            .and_then(Value::as_u64)
            .ok_or_else(|| "unexpected XPENDING reply".into()),
        other => Err(format!("unexpected XPENDING reply {other:?}").into()),
    }
}

/// What a drain by a worker gave.
#[derive(Debug, Clone)]
pub(crate) struct Drained {
    pub(crate) took: Duration,
    pub(crate) deliveries: u64,
    pub(crate) cpu: CpuUse,
    /// `INFO commandstats` deltas over the drain (`None` if unreadable).
    pub(crate) cmds: Option<Stats>,
}

/// What each handler does before it counts its event.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Work {
    /// Nothing: a no-op handler.
    Nothing,
    /// `.await`s `tokio::time::sleep` (yields its thread while it waits).
    Await(Duration),
    /// Blocks its thread with `std::thread::sleep`.
    Block(Duration),
}

/// Starts one worker with one subscriber per group (concurrency `concurrency`, a handler doing
/// `work` and then counting in an AtomicU64) on a stream holding a backlog of `n` events, and
/// times from just before `Worker::start` until every group handled all `n` and XPENDING of every
/// group is 0. `fail_every`: events whose seq is a multiple of it fail their first attempt.
pub(crate) async fn drain_with_worker(
    bus: &Bus,
    n: u64,
    groups: &[&str],
    fail_every: Option<u64>,
    work: Work,
    concurrency: usize,
    tune: impl Fn(SubscriberOptions) -> SubscriberOptions,
) -> BoxResult<Drained> {
    let handled = Arc::new(AtomicU64::new(0));
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut worker = bus.worker().shutdown_grace(Duration::from_secs(5));
    for group in groups {
        let opts = tune(SubscriberOptions::new(*group).concurrency(concurrency));
        let (h, d) = (handled.clone(), deliveries.clone());
        worker = worker.subscribe(subscriber_fn(opts, move |ev: Load, ctx: Context| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                d.fetch_add(1, Ordering::Relaxed);
                match work {
                    Work::Nothing => {}
                    Work::Await(t) => tokio::time::sleep(t).await,
                    Work::Block(t) => std::thread::sleep(t),
                }
                if fail_every.is_some_and(|k| ev.seq.is_multiple_of(k)) && ctx.attempt() == 1 {
                    return Err("planned first-attempt failure");
                }
                h.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }));
    }
    let key = bus.stream_key(Load::STREAM)?;
    let target = n * groups.len() as u64;
    let cmds = CmdMeter::start(bus.redis()).await;
    let meter = CpuMeter::start(bus.redis()).await;
    let started = Instant::now();
    let handle = worker.start().await?;
    let waited = wait_drained(bus, &key, groups, &handled, target, started).await;
    let took = started.elapsed();
    let cpu = meter.stop(bus.redis()).await;
    let cmds = cmds.stop(bus.redis()).await;
    handle.shutdown().await?;
    waited?;
    Ok(Drained {
        took,
        deliveries: deliveries.load(Ordering::Relaxed),
        cpu,
        cmds,
    })
}

async fn wait_drained(
    bus: &Bus,
    key: &str,
    groups: &[&str],
    handled: &AtomicU64,
    target: u64,
    started: Instant,
) -> BoxResult<()> {
    let deadline = started + Duration::from_secs(180);
    let stalled = |what: &str| -> BoxError {
        format!(
            "drain stalled ({what}): handled {} of {target}",
            handled.load(Ordering::Relaxed)
        )
        .into()
    };
    while handled.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return Err(stalled("handlers"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let mut pending = 0;
        for g in groups {
            pending += xpending_count(bus.redis(), key, g).await?;
        }
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(stalled(&format!("{pending} still pending")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
