//! Streambus load generator: throughput, drain, fan-out, retry and latency workloads against a real
//! Redis, next to raw fred ceilings measured in the same run with the same entries.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen -- [--json] [--events N] [--latency-secs S]
//!     [--rate R] [--repeat K] [--concurrency C] [--only LIST] [--big]
//! ```
//!
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`).
//! - `--events N`: events per workload (default 100 000).
//! - `--latency-secs S` / `--rate R`: the latency workloads publish R events/s for S s (2 000, 10).
//! - `--repeat K`: throughput workloads run K times; the median is reported with the range
//!   (default 3).
//! - `--concurrency C`: handler concurrency of every subscriber (default 32, as the issue asks).
//! - `--only LIST`: comma-separated subset of `drain,fanout,retry,publish,latency,raw,rb,big`
//!   (for profiling one workload); skipped metrics are `null`.
//! - `--big`: also drain a 1 000 000-event backlog and report the RSS peak of that phase.
//! - `--json`: end with one JSON line of every metric.
//!
//! Every key lives under a unique prefix (`loadgen-<random>-<workload>`) and is deleted at the
//! end, also on error or Ctrl-C.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::raw;
use benches::{
    latency_histogram, peak_rss_mib, rss_mib, since_us, BoxError, BoxResult, CpuMeter, CpuUse,
    LatencySummary, Load, BODY,
};
use bus_core::testing::{delete_prefix, unique_prefix};
use bus_core::{subscriber_fn, Bus, Context, Event, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

const WORKLOADS: [&str; 8] = [
    "drain", "fanout", "retry", "publish", "latency", "raw", "rb", "big",
];

#[derive(Debug, Clone)]
struct Args {
    json: bool,
    events: u64,
    latency_secs: u64,
    rate: u64,
    repeat: usize,
    concurrency: usize,
    only: Option<Vec<String>>,
    big: bool,
}

impl Args {
    fn parse() -> BoxResult<Self> {
        let mut args = Args {
            json: false,
            events: 100_000,
            latency_secs: 10,
            rate: 2_000,
            repeat: 3,
            concurrency: 32,
            only: None,
            big: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .ok_or_else(|| BoxError::from(format!("{name} needs a value")))
            };
            match a.as_str() {
                "--json" => args.json = true,
                "--big" => args.big = true,
                "--events" => args.events = value("--events")?.parse()?,
                "--latency-secs" => args.latency_secs = value("--latency-secs")?.parse()?,
                "--rate" => args.rate = value("--rate")?.parse()?,
                "--repeat" => args.repeat = value("--repeat")?.parse()?,
                "--concurrency" => args.concurrency = value("--concurrency")?.parse()?,
                "--only" => {
                    let list: Vec<String> = value("--only")?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect();
                    if let Some(bad) = list.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
                        return Err(format!(
                            "unknown workload {bad:?}; known: {}",
                            WORKLOADS.join(",")
                        )
                        .into());
                    }
                    args.big |= list.iter().any(|w| w == "big");
                    args.only = Some(list);
                }
                "-h" | "--help" => {
                    println!(
                        "usage: loadgen [--json] [--events N] [--latency-secs S] [--rate R] \
                         [--repeat K] [--concurrency C] [--only {}] [--big]",
                        WORKLOADS.join(",")
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?} (try --help)").into()),
            }
        }
        if args.events == 0
            || args.repeat == 0
            || args.rate == 0
            || args.latency_secs == 0
            || args.concurrency == 0
        {
            return Err(
                "--events, --repeat, --rate, --latency-secs and --concurrency must be at least 1"
                    .into(),
            );
        }
        Ok(args)
    }

    fn wants(&self, workload: &str) -> bool {
        match &self.only {
            Some(list) => list.iter().any(|w| w == workload),
            None => workload != "big" || self.big,
        }
    }
}

/// Samples of one throughput metric (one per repeat).
#[derive(Debug, Default, Clone)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn median(&self) -> Option<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn range(&self) -> Option<(f64, f64)> {
        let min = self.0.iter().copied().reduce(f64::min)?;
        let max = self.0.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }
}

/// Samples of a throughput metric with the CPU each event cost the client (this process) and the
/// Redis server, in µs per event.
#[derive(Debug, Default, Clone)]
struct Series {
    rate: Samples,
    client_us: Samples,
    redis_us: Samples,
}

impl Series {
    /// Adds one run of `count` events; returns its rate.
    fn push(&mut self, count: u64, took: Duration, cpu: CpuUse) -> f64 {
        let rate = per_s(count, took);
        self.rate.push(rate);
        self.client_us
            .push(cpu.client_s * 1e6 / count.max(1) as f64);
        self.redis_us.push(cpu.redis_s * 1e6 / count.max(1) as f64);
        rate
    }
}

/// Everything measured. `None` = not run (serialized as `null`).
#[derive(Debug, Default, Serialize)]
struct Report {
    events: u64,
    repeat: usize,
    concurrency: usize,
    redis_version: Option<String>,
    publish_sequential_per_s: Option<f64>,
    publish_concurrent_per_s: Option<f64>,
    publish_batch_per_s: Option<f64>,
    drain_per_s: Option<f64>,
    /// W2 with read-ahead (`SubscriberOptions::prefetch`) so reads ask for up to 256 entries.
    drain_prefetch_per_s: Option<f64>,
    drain_prefetch_ratio: Option<f64>,
    fanout_deliveries_per_s: Option<f64>,
    retry_drain_per_s: Option<f64>,
    retry_total_s: Option<f64>,
    retry_deliveries: Option<u64>,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    latency_rate_per_s: Option<f64>,
    raw_xadd_per_s: Option<f64>,
    raw_drain_per_s: Option<f64>,
    /// The best raw drain with at most `concurrency` entries read and not handled (W2's bound).
    raw_drain_bounded_per_s: Option<f64>,
    raw_latency_p50_ms: Option<f64>,
    raw_latency_p99_ms: Option<f64>,
    raw_latency_max_ms: Option<f64>,
    redis_benchmark_xadd_per_s: Option<f64>,
    publish_ratio: Option<f64>,
    drain_ratio: Option<f64>,
    /// W2 / the best raw drain under the same back-pressure bound: the framework's own cost.
    drain_ratio_bounded: Option<f64>,
    fanout_ratio: Option<f64>,
    latency_ratio: Option<f64>,
    /// Median over repeats of (best W1c / best raw XADD) measured in the same repeat.
    publish_ratio_paired: Option<f64>,
    /// Median over repeats of (W2 / best raw drain) measured in the same repeat.
    drain_ratio_paired: Option<f64>,
    worker_peak_rss_mib: Option<f64>,
    process_peak_rss_mib: Option<f64>,
    big_events: Option<u64>,
    big_drain_per_s: Option<f64>,
    big_phase_peak_rss_mib: Option<f64>,
    /// Median of every metric and variant measured, by name.
    medians: BTreeMap<String, f64>,
    /// (min, max) of every repeated metric, by name.
    ranges: BTreeMap<String, (f64, f64)>,
}

impl Report {
    /// Records the samples of a metric under `name` (in `medians` and `ranges`); returns the median.
    fn record(&mut self, name: &str, s: &Samples) -> Option<f64> {
        let m = s.median()?;
        self.medians.insert(name.to_owned(), m);
        if let Some(r) = s.range() {
            self.ranges.insert(name.to_owned(), r);
        }
        Some(m)
    }

    /// Records a series as `<name>_per_s`, `<name>_client_cpu_us` and `<name>_redis_cpu_us`;
    /// returns the median rate.
    fn record_series(&mut self, name: &str, s: &Series) -> Option<f64> {
        self.record(&format!("{name}_client_cpu_us"), &s.client_us);
        self.record(&format!("{name}_redis_cpu_us"), &s.redis_us);
        self.record(&format!("{name}_per_s"), &s.rate)
    }

    /// The best median rate (`…_per_s`) among the metrics whose name starts with `prefix`.
    fn best(&self, prefix: &str) -> Option<f64> {
        self.medians
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.ends_with("_per_s"))
            .map(|(_, v)| *v)
            .reduce(f64::max)
    }

    fn ratios(&mut self) {
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        self.publish_ratio = div(self.publish_batch_per_s, self.raw_xadd_per_s);
        self.drain_ratio = div(self.drain_per_s, self.raw_drain_per_s);
        self.drain_prefetch_ratio = div(self.drain_prefetch_per_s, self.raw_drain_per_s);
        self.drain_ratio_bounded = div(self.drain_per_s, self.raw_drain_bounded_per_s);
        self.fanout_ratio = div(self.fanout_deliveries_per_s, self.drain_per_s);
        self.latency_ratio = div(self.latency_p99_ms, self.raw_latency_p99_ms);
    }
}

/// The run: where to connect, the unique prefix, and every bus made (for clean-up).
struct Run {
    url: String,
    base: String,
    buses: Vec<Bus>,
}

impl Run {
    /// A bus whose keys live under `<base>-<name>:`.
    async fn bus(&mut self, name: &str) -> BoxResult<Bus> {
        let bus = Bus::builder()
            .prefix(format!("{}-{name}", self.base))
            .connect(&self.url)
            .await?;
        self.buses.push(bus.clone());
        Ok(bus)
    }

    async fn cleanup(&self) -> BoxResult<u64> {
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

fn progress(msg: &str) {
    eprintln!("[loadgen] {msg}");
}

fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Publishes `0..n` with `publish_batch` in batches of `batch`, `in_flight` batches at a time.
async fn publish_batches(bus: &Bus, n: u64, batch: u64, in_flight: usize) -> BoxResult<()> {
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
async fn backlog(bus: &Bus, n: u64) -> BoxResult<()> {
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
#[derive(Debug, Clone, Copy)]
struct Drained {
    took: Duration,
    deliveries: u64,
    cpu: CpuUse,
}

/// Starts one worker with one subscriber per group (concurrency 32, no-op handler counting in an
/// AtomicU64) on a stream holding a backlog of `n` events, and times from just before
/// `Worker::start` until every group handled all `n` and XPENDING of every group is 0.
/// `fail_every`: events whose seq is a multiple of it fail their first attempt.
async fn drain_with_worker(
    bus: &Bus,
    n: u64,
    groups: &[&str],
    fail_every: Option<u64>,
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
    let meter = CpuMeter::start(bus.redis()).await;
    let started = Instant::now();
    let handle = worker.start().await?;
    let waited = wait_drained(bus, &key, groups, &handled, target, started).await;
    let took = started.elapsed();
    let cpu = meter.stop(bus.redis()).await;
    handle.shutdown().await?;
    waited?;
    Ok(Drained {
        took,
        deliveries: deliveries.load(Ordering::Relaxed),
        cpu,
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

/// W3: publish at `rate`/s for `secs` s through the bus while a worker runs; latency from the
/// publish stamp to the start of the handler.
async fn bus_latency(
    bus: &Bus,
    rate: u64,
    secs: u64,
    concurrency: usize,
) -> BoxResult<(hdrhistogram::Histogram<u64>, f64)> {
    let hist = Arc::new(Mutex::new(latency_histogram()?));
    let seen = Arc::new(AtomicU64::new(0));
    let (h, s) = (hist.clone(), seen.clone());
    let sub = subscriber_fn(
        SubscriberOptions::new("latency").concurrency(concurrency),
        move |ev: Load, _ctx: Context| {
            let us = since_us(ev.sent_ns).max(1);
            if let Ok(mut h) = h.lock() {
                let _ = h.record(us);
            }
            s.fetch_add(1, Ordering::Relaxed);
            async {}
        },
    );
    let handle = bus.worker().subscribe(sub).start().await?;
    // Let the reader reach its blocking read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = rate * secs;
    let published = raw::paced(rate, total, |seq| {
        let bus = bus.clone();
        async move {
            bus.publish(&Load::new(seq)).await?;
            Ok(())
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while published.is_ok() && seen.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown().await?;
    let achieved = published?;
    let got = seen.load(Ordering::Relaxed);
    if got < total {
        return Err(format!("latency workload: handled {got} of {total}").into());
    }
    let hist = hist
        .lock()
        .map_err(|_| "latency histogram poisoned")?
        .clone();
    Ok((hist, achieved))
}

/// Host, port and extra arguments for redis-benchmark from a `redis://` URL; `None` for TLS or
/// what it cannot read.
fn redis_benchmark_target(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis://")?;
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (hostport, db) = match hostpart.split_once('/') {
        Some((hp, db)) => (hp, Some(db).filter(|d| !d.is_empty())),
        None => (hostpart, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (hostport, "6379"),
    };
    let mut args = vec!["-h".into(), host.to_owned(), "-p".into(), port.to_owned()];
    if let Some(auth) = auth {
        match auth.split_once(':') {
            Some((user, pass)) => {
                if !user.is_empty() {
                    args.extend(["--user".into(), user.to_owned()]);
                }
                args.extend(["-a".into(), pass.to_owned()]);
            }
            None => args.extend(["-a".into(), auth.to_owned()]),
        }
    }
    if let Some(db) = db {
        args.extend(["--dbnum".into(), db.to_owned()]);
    }
    Some(args)
}

/// `redis-benchmark -q -P 32 -c 50 -n 200000 XADD <key> * p <100 bytes>`: requests/s, or `None`
/// when redis-benchmark is not installed or its output is not understood.
async fn redis_benchmark(url: &str, key: &str) -> Option<f64> {
    let mut args = redis_benchmark_target(url)?;
    args.extend(
        [
            "-q", "-P", "32", "-c", "50", "-n", "200000", "XADD", key, "*", "p", BODY,
        ]
        .map(String::from),
    );
    let out = tokio::process::Command::new("redis-benchmark")
        .args(&args)
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        progress(&format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(['\r', '\n'])
        .filter_map(|seg| {
            let before = &seg[..seg.find(" requests per second")?];
            before.split_whitespace().last()?.parse::<f64>().ok()
        })
        .next_back()
}

async fn redis_version(bus: &Bus) -> Option<String> {
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
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The raw side of a phase: its own bus (for the key and clean-up) and its own connection.
struct RawSide {
    bus: Bus,
    client: Client,
    key: String,
}

impl RawSide {
    async fn new(run: &mut Run, name: &str) -> BoxResult<Self> {
        let bus = run.bus(name).await?;
        let key = bus.stream_key(Load::STREAM)?;
        let client = bus.redis().clone_new();
        client.init().await?;
        Ok(Self { bus, client, key })
    }

    async fn clear(&self) -> BoxResult<()> {
        self.client.del::<u64, _>(self.key.as_str()).await?;
        Ok(())
    }

    async fn close(self) -> BoxResult<()> {
        let _ = self.client.quit().await;
        delete_prefix(&self.bus).await?;
        Ok(())
    }
}

const RAW_DRAIN_COUNTS: [u64; 3] = [32, 256, 1_000];
/// Concurrent reads the bounded raw drain splits its `concurrency` entries into.
const RAW_BOUNDED_READS: [u64; 3] = [1, 2, 4];

/// W2 (one worker, one group) and the raw drain ceiling, alternating in each repeat so both see
/// the same machine conditions.
async fn phase_drain(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = if args.wants("drain") {
        Some(run.bus("drain").await?)
    } else {
        None
    };
    let raw = if args.wants("raw") {
        Some(RawSide::new(run, "rawdrain").await?)
    } else {
        None
    };
    let mut w2 = Series::default();
    let mut w2b = Series::default();
    let mut raws: Vec<(u64, Series)> = RAW_DRAIN_COUNTS
        .iter()
        .map(|c| (*c, Series::default()))
        .collect();
    let mut bounded: Vec<(u64, Series)> = RAW_BOUNDED_READS
        .iter()
        .map(|r| (*r, Series::default()))
        .collect();
    let c = args.concurrency as u64;
    let mut paired = Samples::default();
    for i in 0..k {
        let mut line = format!("drain {}/{k}:", i + 1);
        let mut bus_rate = 0.0;
        if let Some(bus) = &bus {
            backlog(bus, n).await?;
            let d = drain_with_worker(bus, n, &["drain"], None, args.concurrency, |o| o).await?;
            let rate = w2.push(n, d.took, d.cpu);
            bus_rate = rate;
            line += &format!(" W2 {rate:.0}/s;");
            delete_prefix(bus).await?;
            backlog(bus, n).await?;
            let ahead = 256usize.saturating_sub(args.concurrency);
            let d = drain_with_worker(bus, n, &["drain"], None, args.concurrency, |o| {
                o.prefetch(ahead)
            })
            .await?;
            let rate = w2b.push(n, d.took, d.cpu);
            line += &format!(" W2 prefetch {rate:.0}/s;");
            delete_prefix(bus).await?;
        }
        if let Some(raw) = &raw {
            raw::xadd_pipelined(&raw.client, &raw.key, n, 1_000, 4).await?;
            line += " raw COUNT";
            let mut raw_best = 0.0_f64;
            for (count, s) in &mut raws {
                let meter = CpuMeter::start(&raw.client).await;
                let took =
                    raw::drain(&raw.client, &raw.key, &format!("raw{count}"), n, *count).await?;
                let rate = s.push(n, took, meter.stop(&raw.client).await);
                raw_best = raw_best.max(rate);
                line += &format!(" {count}: {rate:.0}/s");
            }
            line += &format!("; raw ≤{c} in flight as");
            for (reads, s) in &mut bounded {
                let meter = CpuMeter::start(&raw.client).await;
                let group = format!("rawb{reads}");
                let took = raw::drain_bounded(&raw.client, &raw.key, &group, n, c, *reads).await?;
                let rate = s.push(n, took, meter.stop(&raw.client).await);
                line += &format!(" {reads}×{}: {rate:.0}/s", c / *reads);
            }
            raw.clear().await?;
            if bus_rate > 0.0 && raw_best > 0.0 {
                paired.push(bus_rate / raw_best);
            }
        }
        progress(&line);
    }
    report.drain_ratio_paired = report.record("drain_ratio_paired", &paired);
    if bus.is_some() {
        report.drain_per_s = report.record_series("drain", &w2);
        report.drain_prefetch_per_s = report.record_series("drain_prefetch", &w2b);
    }
    if let Some(raw) = raw {
        for (count, s) in &raws {
            report.record_series(&format!("raw_drain_count{count}"), s);
        }
        report.raw_drain_per_s = report.best("raw_drain_count");
        for (reads, s) in &bounded {
            report.record_series(&format!("raw_bounded_{reads}x{}", c / reads), s);
        }
        report.raw_drain_bounded_per_s = report.best("raw_bounded_");
        raw.close().await?;
    }
    Ok(())
}

/// W4: three groups drain the same backlog in one worker.
async fn phase_fanout(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = run.bus("fanout").await?;
    let mut s = Series::default();
    for i in 0..k {
        backlog(&bus, n).await?;
        let d = drain_with_worker(
            &bus,
            n,
            &["fan1", "fan2", "fan3"],
            None,
            args.concurrency,
            |o| o,
        )
        .await?;
        let rate = s.push(3 * n, d.took, d.cpu);
        progress(&format!("W4 fan-out {}/{k}: {rate:.0} deliveries/s", i + 1));
        delete_prefix(&bus).await?;
    }
    report.fanout_deliveries_per_s = report.record_series("fanout_deliveries", &s);
    Ok(())
}

/// W5: as W2, with every tenth event failing its first attempt (backoff 10–50 ms).
async fn phase_retry(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = run.bus("retry").await?;
    let mut s = Series::default();
    let mut secs = Samples::default();
    let mut deliveries = 0;
    for i in 0..k {
        backlog(&bus, n).await?;
        let d = drain_with_worker(&bus, n, &["retry"], Some(10), args.concurrency, |o| {
            o.backoff_min(Duration::from_millis(10))
                .backoff_max(Duration::from_millis(50))
        })
        .await?;
        deliveries = d.deliveries;
        let rate = s.push(d.deliveries, d.took, d.cpu);
        secs.push(d.took.as_secs_f64());
        progress(&format!(
            "W5 retries {}/{k}: {} deliveries in {:.2} s = {rate:.0}/s",
            i + 1,
            d.deliveries,
            d.took.as_secs_f64(),
        ));
        delete_prefix(&bus).await?;
    }
    report.retry_drain_per_s = report.record_series("retry_drain", &s);
    report.retry_total_s = report.record("retry_total_s", &secs);
    report.retry_deliveries = Some(deliveries);
    Ok(())
}

const BATCH_SHAPES: [(u64, usize); 3] = [(1_000, 4), (100, 16), (1_000, 1)];
/// The raw pipelines: the same shapes as the first two batch shapes.
const RAW_PIPELINE_SHAPES: [(u64, usize); 2] = [(1_000, 4), (100, 16)];

/// W1 (sequential, concurrent, batches) and the raw XADD ceiling, alternating in each repeat.
async fn phase_publish(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = if args.wants("publish") {
        Some(run.bus("publish").await?)
    } else {
        None
    };
    let raw = if args.wants("raw") {
        Some(RawSide::new(run, "rawxadd").await?)
    } else {
        None
    };
    let mut seq = Series::default();
    let mut conc = Series::default();
    let mut batches: Vec<Series> = BATCH_SHAPES.iter().map(|_| Series::default()).collect();
    let mut pipes: Vec<Series> = RAW_PIPELINE_SHAPES
        .iter()
        .map(|_| Series::default())
        .collect();
    let mut raw_conc = Series::default();
    let mut paired = Samples::default();
    for i in 0..k {
        let mut line = format!("publish {}/{k}:", i + 1);
        let (mut bus_best, mut raw_best) = (0.0_f64, 0.0_f64);
        if let Some(bus) = &bus {
            let client = bus.redis();
            let meter = CpuMeter::start(client).await;
            let t = Instant::now();
            for s in 0..n {
                bus.publish(&Load::new(s)).await?;
            }
            let took = t.elapsed();
            let rate = seq.push(n, took, meter.stop(client).await);
            line += &format!(" W1a {rate:.0}/s;");
            delete_prefix(bus).await?;

            let meter = CpuMeter::start(client).await;
            let t = Instant::now();
            futures::stream::iter(0..n)
                .map(|s| async move {
                    bus.publish(&Load::new(s)).await?;
                    Ok::<(), BoxError>(())
                })
                .buffer_unordered(1_000)
                .try_collect::<()>()
                .await?;
            let took = t.elapsed();
            let rate = conc.push(n, took, meter.stop(client).await);
            line += &format!(" W1b {rate:.0}/s;");
            delete_prefix(bus).await?;
        }
        // Batch shapes and the raw pipelines of the same shape back to back, so each pair sees the
        // same machine conditions.
        for (j, ((batch, in_flight), s)) in BATCH_SHAPES.iter().zip(&mut batches).enumerate() {
            if let Some(bus) = &bus {
                let client = bus.redis();
                let meter = CpuMeter::start(client).await;
                let t = Instant::now();
                publish_batches(bus, n, *batch, *in_flight).await?;
                let took = t.elapsed();
                let rate = s.push(n, took, meter.stop(client).await);
                bus_best = bus_best.max(rate);
                line += &format!(" W1c {batch}x{in_flight} {rate:.0}/s;");
                delete_prefix(bus).await?;
            }
            if let (Some(raw), Some(((batch, in_flight), s))) =
                (&raw, RAW_PIPELINE_SHAPES.iter().zip(&mut pipes).nth(j))
            {
                let c = &raw.client;
                let meter = CpuMeter::start(c).await;
                let t = Instant::now();
                raw::xadd_pipelined(c, &raw.key, n, *batch, *in_flight).await?;
                let took = t.elapsed();
                let rate = s.push(n, took, meter.stop(c).await);
                raw_best = raw_best.max(rate);
                line += &format!(" raw pipeline {batch}x{in_flight} {rate:.0}/s;");
                raw.clear().await?;
            }
        }
        if let Some(raw) = &raw {
            let c = &raw.client;
            let meter = CpuMeter::start(c).await;
            let t = Instant::now();
            raw::xadd_concurrent(c, &raw.key, n, 1_000).await?;
            let took = t.elapsed();
            let rate = raw_conc.push(n, took, meter.stop(c).await);
            raw_best = raw_best.max(rate);
            line += &format!(" raw concurrent {rate:.0}/s");
            raw.clear().await?;
        }
        if bus_best > 0.0 && raw_best > 0.0 {
            paired.push(bus_best / raw_best);
        }
        progress(&line);
    }
    report.publish_ratio_paired = report.record("publish_ratio_paired", &paired);
    if bus.is_some() {
        report.publish_sequential_per_s = report.record_series("publish_sequential", &seq);
        report.publish_concurrent_per_s = report.record_series("publish_concurrent", &conc);
        for ((batch, in_flight), s) in BATCH_SHAPES.iter().zip(&batches) {
            report.record_series(&format!("publish_batch_{batch}x{in_flight}"), s);
        }
        report.publish_batch_per_s = report.best("publish_batch_");
    }
    if let Some(raw) = raw {
        for ((batch, in_flight), s) in RAW_PIPELINE_SHAPES.iter().zip(&pipes) {
            report.record_series(&format!("raw_xadd_pipeline_{batch}x{in_flight}"), s);
        }
        report.record_series("raw_xadd_concurrent", &raw_conc);
        report.raw_xadd_per_s = report.best("raw_xadd_");
        raw.close().await?;
    }
    Ok(())
}

/// W3 and the raw latency, one after the other.
async fn phase_latency(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    if args.wants("latency") {
        let bus = run.bus("latency").await?;
        let (hist, achieved) =
            bus_latency(&bus, args.rate, args.latency_secs, args.concurrency).await?;
        let l = LatencySummary::of(&hist);
        report.latency_p50_ms = Some(l.p50_ms);
        report.latency_p99_ms = Some(l.p99_ms);
        report.latency_max_ms = Some(l.max_ms);
        report.latency_rate_per_s = Some(achieved);
        progress(&format!(
            "W3 latency at {achieved:.0}/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        ));
        delete_prefix(&bus).await?;
    }
    if args.wants("raw") {
        let raw = RawSide::new(run, "rawlatency").await?;
        let outcome = raw::latency(&raw.client, &raw.key, args.rate, args.latency_secs).await;
        raw.close().await?;
        let (hist, achieved) = outcome?;
        let l = LatencySummary::of(&hist);
        report.raw_latency_p50_ms = Some(l.p50_ms);
        report.raw_latency_p99_ms = Some(l.p99_ms);
        report.raw_latency_max_ms = Some(l.max_ms);
        progress(&format!(
            "raw latency at {achieved:.0}/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        ));
    }
    Ok(())
}

/// `--big`: a 1 000 000-event backlog drained by one worker; the RSS peak of that phase alone.
async fn phase_big(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let big = 1_000_000;
    let bus = run.bus("big").await?;
    progress("big: publishing a 1 000 000-event backlog");
    backlog(&bus, big).await?;
    let reset = reset_peak_rss();
    let before = rss_mib();
    let d = drain_with_worker(&bus, big, &["big"], None, args.concurrency, |o| o).await?;
    report.big_events = Some(big);
    report.big_drain_per_s = Some(per_s(big, d.took));
    report.big_phase_peak_rss_mib = if reset { peak_rss_mib() } else { None };
    progress(&format!(
        "big: drained {big} in {:.1} s ({:.0}/s); RSS before {:?} MiB, peak during {:?} MiB",
        d.took.as_secs_f64(),
        per_s(big, d.took),
        before,
        report.big_phase_peak_rss_mib
    ));
    delete_prefix(&bus).await?;
    Ok(())
}

async fn run_all(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    report.events = args.events;
    report.repeat = args.repeat;
    report.concurrency = args.concurrency;
    // Consume side first, so the peak RSS read after it reflects the workers.
    if args.wants("drain") || args.wants("raw") {
        phase_drain(args, run, report).await?;
    }
    if args.wants("fanout") {
        phase_fanout(args, run, report).await?;
    }
    if args.wants("retry") {
        phase_retry(args, run, report).await?;
    }
    if args.wants("drain") || args.wants("fanout") || args.wants("retry") {
        report.worker_peak_rss_mib = peak_rss_mib();
    }
    if args.wants("publish") || args.wants("raw") {
        phase_publish(args, run, report).await?;
    }
    if args.wants("rb") {
        let bus = run.bus("rb").await?;
        let key = format!("{}:rb", bus.prefix());
        report.redis_benchmark_xadd_per_s = redis_benchmark(&run.url, &key).await;
        progress(&format!(
            "redis-benchmark XADD -P 32 -c 50: {}",
            fmt_rate(report.redis_benchmark_xadd_per_s)
        ));
        delete_prefix(&bus).await?;
    }
    if args.wants("latency") || args.wants("raw") {
        phase_latency(args, run, report).await?;
    }
    if args.wants("big") {
        phase_big(args, run, report).await?;
    }
    report.process_peak_rss_mib = peak_rss_mib();
    Ok(())
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0}/s"))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.3} ms"))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn fmt_ratio(v: Option<f64>, target: &str, ok: impl Fn(f64) -> bool) -> String {
    v.map_or_else(
        || "–".into(),
        |v| format!("{v:.2} (target {target}: {})", verdict(ok(v))),
    )
}

fn print_table(r: &Report) {
    // A throughput row: median rate, then range and CPU per event of the series `name`.
    let series = |label: &str, name: &str| -> (String, String, String) {
        let rate = r.medians.get(&format!("{name}_per_s")).copied();
        let mut notes = Vec::new();
        if let Some((a, b)) = r.ranges.get(&format!("{name}_per_s")) {
            notes.push(format!("range {a:.0} – {b:.0}"));
        }
        if let (Some(c), Some(s)) = (
            r.medians.get(&format!("{name}_client_cpu_us")),
            r.medians.get(&format!("{name}_redis_cpu_us")),
        ) {
            notes.push(format!("CPU/event: client {c:.1} µs, Redis {s:.1} µs"));
        }
        (label.to_owned(), fmt_rate(rate), notes.join("; "))
    };
    let latency = |p50, p99, max| format!("{} / {} / {}", fmt_ms(p50), fmt_ms(p99), fmt_ms(max));
    let mut rows = vec![
        series("W1a publish, awaited one by one", "publish_sequential"),
        series("W1b publish, 1000 concurrent", "publish_concurrent"),
    ];
    for (batch, in_flight) in BATCH_SHAPES {
        rows.push(series(
            &format!("W1c publish_batch {batch} × {in_flight} in flight"),
            &format!("publish_batch_{batch}x{in_flight}"),
        ));
    }
    rows.push(series(
        &format!("W2 drain, 1 worker, concurrency {}", r.concurrency),
        "drain",
    ));
    rows.push(series(
        &format!(
            "W2b drain, concurrency {}, prefetch {} (reads of 256)",
            r.concurrency,
            256usize.saturating_sub(r.concurrency)
        ),
        "drain_prefetch",
    ));
    rows.push((
        "W3 latency p50 / p99 / max".into(),
        latency(r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms),
        r.latency_rate_per_s
            .map_or_else(String::new, |v| format!("at {v:.0}/s")),
    ));
    rows.push(series(
        "W4 fan-out, 3 groups (deliveries/s)",
        "fanout_deliveries",
    ));
    let mut retry = series("W5 retries, 10% fail once (deliveries/s)", "retry_drain");
    retry.2 = format!(
        "{} deliveries in {} s; {}",
        r.retry_deliveries.map_or("–".into(), |d| d.to_string()),
        r.retry_total_s.map_or("–".into(), |s| format!("{s:.2}")),
        retry.2
    );
    rows.push(retry);
    for (batch, in_flight) in RAW_PIPELINE_SHAPES {
        rows.push(series(
            &format!("raw XADD pipeline {batch} × {in_flight} in flight"),
            &format!("raw_xadd_pipeline_{batch}x{in_flight}"),
        ));
    }
    rows.push(series("raw XADD, 1000 concurrent", "raw_xadd_concurrent"));
    for count in RAW_DRAIN_COUNTS {
        rows.push(series(
            &format!("raw drain XREADGROUP COUNT {count}"),
            &format!("raw_drain_count{count}"),
        ));
    }
    let c = r.concurrency as u64;
    for reads in RAW_BOUNDED_READS {
        rows.push(series(
            &format!(
                "raw drain ≤ {c} in flight: {reads} × XREADGROUP COUNT {} pipelined",
                c / reads
            ),
            &format!("raw_bounded_{reads}x{}", c / reads),
        ));
    }
    rows.push((
        "raw latency p50 / p99 / max".into(),
        latency(
            r.raw_latency_p50_ms,
            r.raw_latency_p99_ms,
            r.raw_latency_max_ms,
        ),
        String::new(),
    ));
    rows.push((
        "redis-benchmark XADD -P 32 -c 50".into(),
        fmt_rate(r.redis_benchmark_xadd_per_s),
        "context only".into(),
    ));
    rows.push((
        "worker peak RSS (VmHWM after W2/W4/W5)".into(),
        r.worker_peak_rss_mib
            .map_or("–".into(), |v| format!("{v:.1} MiB")),
        r.process_peak_rss_mib
            .map_or(String::new(), |v| format!("process peak at end {v:.1} MiB")),
    ));
    if let Some(big) = r.big_events {
        rows.push((
            format!("--big: drain a {big} backlog"),
            fmt_rate(r.big_drain_per_s),
            r.big_phase_peak_rss_mib.map_or(String::new(), |v| {
                format!("peak RSS of that phase {v:.1} MiB")
            }),
        ));
    }
    rows.push((
        "publish_ratio = best batch / best raw XADD".into(),
        fmt_ratio(r.publish_ratio, "≥ 0.8", |v| v >= 0.8),
        r.publish_ratio_paired
            .map_or(String::new(), |v| format!("paired per repeat: {v:.2}")),
    ));
    rows.push((
        "drain_ratio = W2 / best raw drain".into(),
        fmt_ratio(r.drain_ratio, "≥ 0.8", |v| v >= 0.8),
        r.drain_ratio_paired
            .map_or(String::new(), |v| format!("paired per repeat: {v:.2}")),
    ));
    rows.push((
        format!("drain_ratio_bounded = W2 / best raw drain ≤ {c} in flight"),
        fmt_ratio(r.drain_ratio_bounded, "≥ 0.8", |v| v >= 0.8),
        "the framework's own cost at the same back-pressure bound".into(),
    ));
    rows.push((
        "drain_prefetch_ratio = W2b / best raw drain".into(),
        fmt_ratio(r.drain_prefetch_ratio, "≥ 0.8", |v| v >= 0.8),
        String::new(),
    ));
    rows.push((
        "fanout_ratio = W4 deliveries / W2".into(),
        fmt_ratio(r.fanout_ratio, "≥ 0.8", |v| v >= 0.8),
        String::new(),
    ));
    rows.push((
        "latency_ratio = W3 p99 / raw p99".into(),
        fmt_ratio(r.latency_ratio, "≤ 1.5", |v| v <= 1.5),
        r.latency_p99_ms.map_or(String::new(), |p| {
            format!("p99 ≤ 5 ms: {}", verdict(p <= 5.0))
        }),
    ));
    rows.push((
        "worker peak RSS ≤ 64 MiB".into(),
        r.worker_peak_rss_mib
            .map_or("–".into(), |v| verdict(v <= 64.0).to_owned()),
        String::new(),
    ));
    println!(
        "Streambus loadgen: {} events, ~{} B MessagePack payload, Redis {}, median of {} runs",
        r.events,
        bus_core::Codec::MessagePack
            .encode(&Load::new(0))
            .map_or(0, |b| b.len()),
        r.redis_version.as_deref().unwrap_or("?"),
        r.repeat
    );
    println!();
    println!("| workload | result | notes |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let _ = benches::now_ns(); // fix the monotonic base
    let args = Args::parse()?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut run = Run {
        url,
        base: unique_prefix("loadgen"),
        buses: Vec::new(),
    };
    progress(&format!("prefix {}-*, {} events", run.base, args.events));
    let mut report = Report::default();
    let started = Instant::now();
    let outcome = {
        let probe = run.bus("probe").await?;
        report.redis_version = redis_version(&probe).await;
        tokio::select! {
            r = run_all(&args, &mut run, &mut report) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    };
    let deleted = run.cleanup().await;
    benches::report_cleanup("loadgen", &deleted, started);
    outcome?;
    deleted?;
    report.ratios();
    print_table(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
