//! Downstream-outage benchmark: a worker in a separate process faces a 100 000-event backlog while
//! every handler fails, then the outage ends and it must catch up. Measures the worker's memory
//! during the outage, what it holds when the outage ends, and how long recovery takes.
//!
//! ```text
//! cargo run --release -p benches --bin outage -- [--json] [--outage-secs S] [--events N]
//!     [--concurrency C] [--sample-ms MS] [--timeout-secs T]
//! ```
//!
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`).
//! - `--outage-secs S`: how long every handler fails (default 60).
//! - `--events N`: the backlog (default 100 000 `benches::Load` events, ~130 B MessagePack).
//! - `--concurrency C`: the worker's handler concurrency (default 32).
//! - `--sample-ms MS`: how often the worker's `VmRSS` is read (default 200).
//! - `--timeout-secs T`: the whole run stops after T s (default S + 300); the worker is killed.
//! - `--json`: end with one JSON line of every figure.
//!
//! How it runs:
//!
//! 1. The backlog is published with `publish_batch` (1 000 × 4 in flight), untimed, and the outage
//!    flag (`<prefix>:{load}:bench:outage`) is set.
//! 2. This binary starts itself as `outage worker …` (a separate process) with one subscriber:
//!    group `outage`, concurrency C, backoff 1 s – 5 s, 50 attempts, visibility timeout 30 s,
//!    everything else default (so `max_held` = 2 × C). While the flag exists, every handler
//!    returns `HandlerError::retry` (one `GET` of the flag per attempt, and an `INCR` of a failure
//!    counter). Once a handler finds the flag gone, the process stops asking; every handled event
//!    sets its `seq` bit in a bitmap (`SETBIT`) and increments a handled counter.
//! 3. The outage starts when the worker reports it is reading and lasts S s. The parent reads the
//!    worker's `VmRSS` from `/proc/<pid>/status` every MS ms for the whole run, and every second
//!    the entries the worker's consumer owns (`XPENDING` summary).
//! 4. At the end of the outage it records the worker's RSS, its pending entries, the group's `lag`
//!    and `entries-read` (`XINFO GROUPS`), then deletes the flag.
//! 5. Recovery ends when `BITCOUNT` of the bitmap = N (every seq handled at least once), `XPENDING`
//!    is 0 and `lag` is 0.
//! 6. Then the worker's kernel peak (`VmHWM`) is read, it is stopped (stdin closed: graceful
//!    shutdown; killed after 20 s), and the dead letters are counted.
//!
//! Nothing is asserted: the figures are reported, with the issue's goals (peak RSS ≤ 64 MiB,
//! nothing lost, everything handled after recovery) marked met or missed. Every key lives under
//! `outage-<random>:` and is deleted at the end, also on error, timeout, Ctrl-C or SIGTERM; the worker
//! process is killed if the parent stops early and exits by itself if the parent goes away.

use bus_core::testing::RedisAccess;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::{BoxError, BoxResult, Load};
use bus_core::testing::{delete_prefix, unique_prefix};
use bus_core::{subscriber_fn, Bus, Context, Event, HandlerError, SubscriberOptions};
use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

const GROUP: &str = "outage";
const CONSUMER: &str = "outage-worker";
/// How long recovery may still be waited for before the hard timeout (leaves time to stop the
/// worker and clean up).
const STOP_MARGIN: Duration = Duration::from_secs(30);

/// The worker's subscriber options: the defaults except the ones the benchmark fixes.
fn options(concurrency: usize) -> SubscriberOptions {
    SubscriberOptions::new(GROUP)
        .concurrency(concurrency)
        .backoff_min(Duration::from_secs(1))
        .backoff_max(Duration::from_secs(5))
        .max_attempts(50)
        .visibility_timeout(Duration::from_secs(30))
}

/// The benchmark's own keys, under the bus prefix and the stream's hash tag.
#[derive(Debug, Clone)]
struct Keys {
    stream: String,
    flag: String,
    seen: String,
    handled: String,
    failed: String,
    dead: String,
}

impl Keys {
    fn new(bus: &Bus) -> BoxResult<Self> {
        let base = format!("{}:{{{}}}:bench", bus.prefix(), Load::STREAM);
        Ok(Self {
            stream: bus.stream_key(Load::STREAM)?,
            flag: format!("{base}:outage"),
            seen: format!("{base}:seen"),
            handled: format!("{base}:handled"),
            failed: format!("{base}:failed"),
            dead: bus.dead_letter_key(Load::STREAM, GROUP)?,
        })
    }
}

fn progress(msg: &str) {
    eprintln!("[outage] {msg}");
}

fn flag_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

// ------------------------------------------------------------------------------------------------
// The worker process (`outage worker …`).
// ------------------------------------------------------------------------------------------------

/// What every handler of the worker process shares.
struct HandlerState {
    client: Client,
    keys: Keys,
    /// Set once a handler found the outage flag gone (the outage never comes back).
    over: AtomicBool,
}

async fn handle(st: &HandlerState, seq: u64) -> Result<(), HandlerError> {
    if !st.over.load(Ordering::Acquire) {
        let on: Option<String> = st
            .client
            .get(st.keys.flag.as_str())
            .await
            .map_err(HandlerError::retry)?;
        if on.is_some() {
            let _: Result<u64, _> = st.client.incr(st.keys.failed.as_str()).await;
            return Err(HandlerError::retry("downstream outage"));
        }
        st.over.store(true, Ordering::Release);
    }
    let setbit = st.client.custom::<Value, Value>(
        CustomCommand::new_static("SETBIT", None, false),
        vec![
            Value::from(st.keys.seen.as_str()),
            Value::from(seq as i64),
            Value::from(1),
        ],
    );
    let incr = st.client.incr::<u64, _>(st.keys.handled.as_str());
    tokio::try_join!(setbit, incr).map_err(HandlerError::retry)?;
    Ok(())
}

/// `outage worker --url U --prefix P --consumer C --concurrency N --max-secs S`: runs the
/// subscriber, prints `ready <consumer>` once reading, and shuts down gracefully when stdin
/// closes (the parent stopped or went away), on Ctrl-C, or after S s.
async fn worker_main(args: &[String]) -> BoxResult<()> {
    let need = |name: &str| {
        flag_value(args, name)
            .map(str::to_owned)
            .ok_or_else(|| BoxError::from(format!("worker: {name} is required")))
    };
    let url = need("--url")?;
    let prefix = need("--prefix")?;
    let consumer = need("--consumer")?;
    let concurrency: usize = need("--concurrency")?.parse()?;
    let max_secs: u64 = need("--max-secs")?.parse()?;

    let bus = Bus::builder().prefix(prefix).connect(&url).await?;
    let state = Arc::new(HandlerState {
        client: bus.redis().clone(),
        keys: Keys::new(&bus)?,
        over: AtomicBool::new(false),
    });
    let sub = subscriber_fn(options(concurrency), move |ev: Load, _ctx: Context| {
        let st = state.clone();
        async move { handle(&st, ev.seq).await }
    });
    let handle = bus
        .worker()
        .consumer_name(consumer)
        .shutdown_grace(Duration::from_secs(5))
        .subscribe(sub)
        .start()
        .await?;
    println!("ready {}", handle.consumer_name());

    // stdin reaches EOF when the parent closes it or exits (tokio's `io-std` is not enabled in
    // this workspace: a plain thread reads it).
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = eof_tx.send(());
    });
    tokio::select! {
        _ = eof_rx => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(max_secs)) => {
            eprintln!("[outage worker] --max-secs reached; stopping");
        }
    }
    handle.shutdown().await?;
    bus.close().await;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The parent.
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    json: bool,
    outage_secs: u64,
    events: u64,
    concurrency: usize,
    sample_ms: u64,
    timeout_secs: Option<u64>,
}

impl Args {
    fn parse(argv: &[String]) -> BoxResult<Self> {
        let mut args = Args {
            json: false,
            outage_secs: 60,
            events: 100_000,
            concurrency: 32,
            sample_ms: 200,
            timeout_secs: None,
        };
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .ok_or_else(|| BoxError::from(format!("{name} needs a value")))
            };
            match a.as_str() {
                "--json" => args.json = true,
                "--outage-secs" => args.outage_secs = value(a)?.parse()?,
                "--events" => args.events = value(a)?.parse()?,
                "--concurrency" => args.concurrency = value(a)?.parse()?,
                "--sample-ms" => args.sample_ms = value(a)?.parse()?,
                "--timeout-secs" => args.timeout_secs = Some(value(a)?.parse()?),
                "-h" | "--help" => {
                    println!(
                        "usage: outage [--json] [--outage-secs S] [--events N] [--concurrency C] \
                         [--sample-ms MS] [--timeout-secs T]"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?} (try --help)").into()),
            }
        }
        if args.events == 0 || args.concurrency == 0 || args.sample_ms == 0 {
            return Err("--events, --concurrency and --sample-ms must be at least 1".into());
        }
        Ok(args)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(self.outage_secs + 300))
    }
}

/// The worker's state at one moment of the outage.
#[derive(Debug, Clone, Serialize)]
struct Point {
    t_s: f64,
    rss_mib: Option<f64>,
    held: u64,
    lag: Option<u64>,
    failed_attempts: u64,
}

/// Everything measured. `None` = could not be read.
#[derive(Debug, Default, Serialize)]
struct Report {
    events: u64,
    concurrency: usize,
    max_held_option: usize,
    outage_secs: u64,
    sample_ms: u64,
    redis_version: Option<String>,
    backlog_publish_s: f64,
    worker_start_s: f64,
    /// Worker RSS when it reported it was reading.
    rss_at_ready_mib: Option<f64>,
    /// Largest sampled `VmRSS` over the whole run.
    peak_rss_mib: Option<f64>,
    /// The kernel's peak (`VmHWM`) read after recovery, before the worker stopped.
    vmhwm_mib: Option<f64>,
    rss_samples: u64,
    rss_at_outage_end_mib: Option<f64>,
    rss_after_recovery_mib: Option<f64>,
    /// Entries the worker's consumer owned (`XPENDING` summary) when the outage ended.
    held_at_outage_end: u64,
    /// Most entries the consumer owned in the once-a-second samples during the outage.
    held_max_during_outage: u64,
    pending_at_outage_end: u64,
    lag_at_outage_end: Option<u64>,
    entries_read_at_outage_end: Option<u64>,
    failed_attempts: u64,
    worker_cpu_outage_s: Option<f64>,
    worker_cpu_recovery_s: Option<f64>,
    /// From the outage's end to the first successful handler (the handled counter > 0).
    first_success_s: Option<f64>,
    /// From the outage's end until every seq was handled, XPENDING 0 and lag 0.
    recovery_s: Option<f64>,
    /// N / (recovery − first success).
    recovery_drain_per_s: Option<f64>,
    handled_unique: u64,
    handled_total: u64,
    duplicates: u64,
    lost: u64,
    dead_letters: u64,
    pending_after: u64,
    lag_after: Option<u64>,
    all_handled: bool,
    recovery_timed_out: bool,
    worker_exit: String,
    outage_timeline: Vec<Point>,
}

fn mib_field(status: &str, field: &str) -> Option<f64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, MiB.
fn proc_mib(pid: u32, field: &str) -> Option<f64> {
    mib_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// CPU (user + system) a process has used, s (100 ticks per second assumed).
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[derive(Debug, Default)]
struct RssStats {
    peak: Option<f64>,
    samples: u64,
}

/// Reads the worker's `VmRSS` every `every` until aborted.
fn spawn_sampler(
    pid: u32,
    every: Duration,
    stats: Arc<Mutex<RssStats>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(rss) = proc_mib(pid, "VmRSS") else {
                continue;
            };
            if let Ok(mut s) = stats.lock() {
                s.samples += 1;
                s.peak = Some(s.peak.map_or(rss, |p| p.max(rss)));
            }
        }
    })
}

fn value_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// `XPENDING key group` summary: (total, entries owned by `consumer`).
async fn pending(client: &Client, keys: &Keys, consumer: &str) -> BoxResult<(u64, u64)> {
    let v: Value = client.xpending(keys.stream.as_str(), GROUP, ()).await?;
    let Value::Array(parts) = v else {
        return Err(format!("unexpected XPENDING reply {v:?}").into());
    };
    let total = parts.first().and_then(value_u64).unwrap_or(0);
    let mut mine = 0;
    if let Some(Value::Array(consumers)) = parts.get(3) {
        for c in consumers {
            if let Value::Array(pair) = c {
                if pair.first().and_then(Value::as_str).as_deref() == Some(consumer) {
                    mine = pair.get(1).and_then(value_u64).unwrap_or(0);
                }
            }
        }
    }
    Ok((total, mine))
}

/// `lag` and `entries-read` of the group (`XINFO GROUPS`).
async fn group_info(client: &Client, keys: &Keys) -> BoxResult<(Option<u64>, Option<u64>)> {
    let groups: Vec<HashMap<String, Value>> = client.xinfo_groups(keys.stream.as_str()).await?;
    for g in groups {
        if g.get("name").and_then(Value::as_str).as_deref() == Some(GROUP) {
            return Ok((
                g.get("lag").and_then(value_u64),
                g.get("entries-read").and_then(value_u64),
            ));
        }
    }
    Err(format!("group {GROUP} not found").into())
}

async fn counter(client: &Client, key: &str) -> BoxResult<u64> {
    let v: Option<u64> = client.get(key).await?;
    Ok(v.unwrap_or(0))
}

async fn bitcount(client: &Client, key: &str) -> BoxResult<u64> {
    let v: u64 = client
        .custom(
            CustomCommand::new_static("BITCOUNT", None, false),
            vec![key.to_owned()],
        )
        .await?;
    Ok(v)
}

/// The untimed backlog: `publish_batch` of 1 000 events, 4 batches in flight.
async fn backlog(bus: &Bus, n: u64) -> BoxResult<()> {
    let starts: Vec<u64> = (0..n).step_by(1_000).collect();
    futures::stream::iter(starts)
        .map(|start| async move {
            let events: Vec<Load> = (start..(start + 1_000).min(n)).map(Load::new).collect();
            bus.publish_batch(&events).await?;
            Ok::<(), BoxError>(())
        })
        .buffer_unordered(4)
        .try_collect()
        .await
}

async fn redis_version(client: &Client) -> Option<String> {
    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

fn exited(child: &mut tokio::process::Child) -> BoxResult<()> {
    match child.try_wait()? {
        Some(status) => Err(format!("the worker process exited early ({status})").into()),
        None => Ok(()),
    }
}

/// The whole measurement; the worker process is killed when this future is dropped.
async fn measure(
    args: &Args,
    bus: &Bus,
    url: &str,
    hard_deadline: Instant,
    report: &mut Report,
) -> BoxResult<()> {
    let client = bus.redis();
    let keys = Keys::new(bus)?;
    let n = args.events;
    report.events = n;
    report.concurrency = args.concurrency;
    // The default bound while every attempt fails: 2 × concurrency (no read-ahead then).
    report.max_held_option = options(args.concurrency)
        .get_max_held()
        .unwrap_or(2 * args.concurrency);
    report.outage_secs = args.outage_secs;
    report.sample_ms = args.sample_ms;
    report.redis_version = redis_version(client).await;

    progress(&format!("publishing a backlog of {n} events (untimed)"));
    let t = Instant::now();
    backlog(bus, n).await?;
    report.backlog_publish_s = t.elapsed().as_secs_f64();
    let () = client
        .set(keys.flag.as_str(), "on", None, None, false)
        .await?;

    // The worker: this binary again, in its own process.
    let max_secs = args.timeout().as_secs() + 60;
    let t = Instant::now();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("worker")
        .args([
            "--url",
            url,
            "--prefix",
            bus.prefix(),
            "--consumer",
            CONSUMER,
        ])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--max-secs", &max_secs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the worker process has no pid")?;
    let stats = Arc::new(Mutex::new(RssStats::default()));
    let sampler = spawn_sampler(pid, Duration::from_millis(args.sample_ms), stats.clone());
    // Aborts the sampler however this function ends.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _sampler = AbortOnDrop(sampler);

    let stdout = child.stdout.take().ok_or("no worker stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    match ready {
        Ok(Ok(Some(line))) if line.starts_with("ready ") => {}
        Ok(Ok(other)) => return Err(format!("worker did not start: {other:?}").into()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err("the worker did not report ready within 30 s".into()),
    }
    let outage_start = Instant::now();
    report.worker_start_s = t.elapsed().as_secs_f64();
    report.rss_at_ready_mib = proc_mib(pid, "VmRSS");
    let cpu_at_ready = proc_cpu_s(pid);
    progress(&format!(
        "worker pid {pid} reading after {:.2} s (RSS {:?} MiB); outage for {} s",
        report.worker_start_s, report.rss_at_ready_mib, args.outage_secs
    ));

    // The outage: every handler fails. Sample what the consumer holds once a second.
    let outage_end = outage_start + Duration::from_secs(args.outage_secs);
    let mut last_point = None::<Instant>;
    loop {
        let now = Instant::now();
        if now >= outage_end {
            break;
        }
        exited(&mut child)?;
        let (_, held) = pending(client, &keys, CONSUMER).await?;
        report.held_max_during_outage = report.held_max_during_outage.max(held);
        if last_point.is_none_or(|p| now.duration_since(p) >= Duration::from_secs(5)) {
            last_point = Some(now);
            let (lag, _) = group_info(client, &keys).await?;
            let point = Point {
                t_s: now.duration_since(outage_start).as_secs_f64(),
                rss_mib: proc_mib(pid, "VmRSS"),
                held,
                lag,
                failed_attempts: counter(client, &keys.failed).await?,
            };
            progress(&format!(
                "outage t={:.0} s: RSS {:?} MiB, held {}, lag {:?}, failed attempts {}",
                point.t_s, point.rss_mib, point.held, point.lag, point.failed_attempts
            ));
            report.outage_timeline.push(point);
        }
        let next = (Instant::now() + Duration::from_secs(1)).min(outage_end);
        tokio::time::sleep_until(next.into()).await;
    }

    // The end of the outage: the state first, then the flag goes.
    report.rss_at_outage_end_mib = proc_mib(pid, "VmRSS");
    let cpu_at_end = proc_cpu_s(pid);
    let (total, held) = pending(client, &keys, CONSUMER).await?;
    let (lag, entries_read) = group_info(client, &keys).await?;
    report.held_at_outage_end = held;
    report.held_max_during_outage = report.held_max_during_outage.max(held);
    report.pending_at_outage_end = total;
    report.lag_at_outage_end = lag;
    report.entries_read_at_outage_end = entries_read;
    report.failed_attempts = counter(client, &keys.failed).await?;
    let _: u64 = client.del(keys.flag.as_str()).await?;
    let recovery_start = Instant::now();
    report.worker_cpu_outage_s = cpu_at_ready.zip(cpu_at_end).map(|(a, b)| b - a);
    progress(&format!(
        "outage over: RSS {:?} MiB, held {held}, pending {total}, lag {lag:?}, entries read \
         {entries_read:?}, failed attempts {}",
        report.rss_at_outage_end_mib, report.failed_attempts
    ));

    // Recovery: until every seq was handled and nothing is pending or undelivered.
    let soft_deadline = hard_deadline
        .checked_sub(STOP_MARGIN)
        .unwrap_or(hard_deadline);
    let mut last_log = Instant::now();
    loop {
        exited(&mut child)?;
        let (handled, unique, (total, _), (lag, _)) = tokio::try_join!(
            counter(client, &keys.handled),
            bitcount(client, &keys.seen),
            pending(client, &keys, CONSUMER),
            group_info(client, &keys),
        )?;
        let since = recovery_start.elapsed().as_secs_f64();
        if handled > 0 && report.first_success_s.is_none() {
            report.first_success_s = Some(since);
        }
        report.handled_total = handled;
        report.handled_unique = unique;
        report.pending_after = total;
        report.lag_after = lag;
        if unique >= n && total == 0 && lag == Some(0) {
            report.recovery_s = Some(since);
            report.all_handled = true;
            break;
        }
        if Instant::now() >= soft_deadline {
            report.recovery_timed_out = true;
            progress("recovery did not finish before the overall timeout");
            break;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            progress(&format!(
                "recovery t={since:.1} s: handled {unique} unique / {handled} total, pending \
                 {total}, lag {lag:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.rss_after_recovery_mib = proc_mib(pid, "VmRSS");
    report.vmhwm_mib = proc_mib(pid, "VmHWM");
    report.worker_cpu_recovery_s = cpu_at_end.zip(proc_cpu_s(pid)).map(|(a, b)| b - a);
    if let (Some(first), Some(all)) = (report.first_success_s, report.recovery_s) {
        report.recovery_drain_per_s = Some(n as f64 / (all - first).max(1e-9));
    }
    if let Ok(s) = stats.lock() {
        report.peak_rss_mib = s.peak;
        report.rss_samples = s.samples;
    }

    // Stop the worker: stdin closed = graceful shutdown; killed if it takes more than 20 s.
    drop(child.stdin.take());
    report.worker_exit = match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(Ok(status)) => format!("exited ({status})"),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            "killed after 20 s".into()
        }
    };
    if let Ok(s) = stats.lock() {
        report.peak_rss_mib = s.peak;
        report.rss_samples = s.samples;
    }

    report.dead_letters = client.xlen(keys.dead.as_str()).await?;
    report.handled_total = counter(client, &keys.handled).await?;
    report.handled_unique = bitcount(client, &keys.seen).await?;
    report.duplicates = report.handled_total.saturating_sub(report.handled_unique);
    report.lost = n.saturating_sub(report.handled_unique);
    let (total, _) = pending(client, &keys, CONSUMER).await?;
    report.pending_after = total;
    report.lag_after = group_info(client, &keys).await?.0;
    Ok(())
}

fn opt_mib(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1} MiB"))
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.2} s"))
}

fn opt_u(v: Option<u64>) -> String {
    v.map_or_else(|| "–".into(), |v| v.to_string())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The larger of the sampled peak and the kernel's `VmHWM`.
fn peak_rss(r: &Report) -> Option<f64> {
    match (r.peak_rss_mib, r.vmhwm_mib) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn print_table(r: &Report) {
    let rows: Vec<(String, String, String)> = vec![
        (
            "backlog published (untimed)".into(),
            r.events.to_string(),
            format!("in {:.2} s", r.backlog_publish_s),
        ),
        (
            "worker RSS when reading".into(),
            opt_mib(r.rss_at_ready_mib),
            format!("worker started in {:.2} s", r.worker_start_s),
        ),
        (
            "worker peak RSS (sampled VmRSS)".into(),
            opt_mib(r.peak_rss_mib),
            format!(
                "{} samples, every {} ms; kernel VmHWM {}",
                r.rss_samples,
                r.sample_ms,
                opt_mib(r.vmhwm_mib)
            ),
        ),
        (
            "worker RSS at the end of the outage".into(),
            opt_mib(r.rss_at_outage_end_mib),
            format!("after recovery {}", opt_mib(r.rss_after_recovery_mib)),
        ),
        (
            "entries held by the worker at the outage's end".into(),
            r.held_at_outage_end.to_string(),
            format!(
                "XPENDING of its consumer; max_held = {}; most seen during the outage {}",
                r.max_held_option, r.held_max_during_outage
            ),
        ),
        (
            "group lag at the outage's end".into(),
            opt_u(r.lag_at_outage_end),
            format!(
                "entries-read {}, pending {}",
                opt_u(r.entries_read_at_outage_end),
                r.pending_at_outage_end
            ),
        ),
        (
            "failed attempts during the outage".into(),
            r.failed_attempts.to_string(),
            format!(
                "worker CPU during the outage {}",
                opt_s(r.worker_cpu_outage_s)
            ),
        ),
        (
            "first success after the outage".into(),
            opt_s(r.first_success_s),
            "from deleting the flag to the handled counter > 0".into(),
        ),
        (
            "recovery: all handled, XPENDING 0, lag 0".into(),
            opt_s(r.recovery_s),
            format!(
                "drain after the first success {}; worker CPU {}",
                r.recovery_drain_per_s
                    .map_or_else(|| "–".into(), |v| format!("{v:.0}/s")),
                opt_s(r.worker_cpu_recovery_s)
            ),
        ),
        (
            "handled (unique seqs / total)".into(),
            format!("{} / {}", r.handled_unique, r.handled_total),
            format!("duplicates {}", r.duplicates),
        ),
        (
            "lost".into(),
            r.lost.to_string(),
            "seqs whose bit is not set".into(),
        ),
        (
            "dead letters".into(),
            r.dead_letters.to_string(),
            String::new(),
        ),
        (
            "left pending / lag after".into(),
            format!("{} / {}", r.pending_after, opt_u(r.lag_after)),
            format!("worker {}", r.worker_exit),
        ),
        (
            "goal: worker peak RSS ≤ 64 MiB".into(),
            verdict(peak_rss(r).is_some_and(|v| v <= 64.0)).into(),
            String::new(),
        ),
        (
            "goal: nothing lost".into(),
            verdict(r.lost == 0 && r.dead_letters == 0).into(),
            String::new(),
        ),
        (
            "goal: all handled after recovery".into(),
            verdict(r.all_handled).into(),
            if r.recovery_timed_out {
                "recovery timed out".into()
            } else {
                String::new()
            },
        ),
    ];
    println!(
        "Streambus downstream outage: {} events, concurrency {}, outage {} s, Redis {}",
        r.events,
        r.concurrency,
        r.outage_secs,
        r.redis_version.as_deref().unwrap_or("?")
    );
    println!();
    println!("| metric | result | notes |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn parent_main(argv: &[String]) -> BoxResult<()> {
    let args = Args::parse(argv)?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = unique_prefix("outage");
    let started = Instant::now();
    let hard_deadline = started + args.timeout();
    let bus = Bus::builder().prefix(&prefix).connect(&url).await?;
    progress(&format!(
        "prefix {prefix}, {} events, outage {} s, overall timeout {} s",
        args.events,
        args.outage_secs,
        args.timeout().as_secs()
    ));
    let mut report = Report::default();
    // Dropping `measure` (timeout, Ctrl-C) drops the child process handle: kill_on_drop.
    let outcome = tokio::select! {
        r = tokio::time::timeout_at(hard_deadline.into(), measure(&args, &bus, &url, hard_deadline, &mut report)) => {
            r.unwrap_or_else(|_| Err("overall timeout reached".into()))
        }
        _ = interrupted() => Err("interrupted".into()),
    };
    let deleted = delete_prefix(&bus).await;
    bus.close().await;
    benches::report_cleanup("outage", &deleted, started);
    outcome?;
    deleted?;
    print_table(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("worker") {
        return worker_main(&argv[1..]).await;
    }
    parent_main(&argv).await
}
