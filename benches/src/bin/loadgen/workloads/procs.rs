//! W7: as a user runs it — a producer process and a worker process, each with a `tracing`
//! subscriber installed (`fmt` at `warn`), next to the same pair written with raw fred calls.
//!
//! The parent starts the worker process (this binary with `--role <side>-worker`), waits for its
//! `ready` line, then starts the producer process (`--role <side>-producer`) and times from there
//! until the worker prints `done`: end-to-end events per second, publishing and draining at once.
//! The producer also reports its own publish rate. The children stop by themselves: the worker
//! gives up after [`CHILD_DEADLINE`], and the parent kills both if it stops waiting.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::raw;
use benches::{BoxResult, Load};
use bus_core::testing::{delete_prefix, RedisAccess};
use bus_core::{subscriber_fn, Bus, Event, SubscriberOptions};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::harness::{progress, publish_batches, Run};
use crate::report::Report;
use crate::stats::Samples;
use crate::Args;

/// Longest a child process works before it gives up.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// The group the worker processes consume with.
const GROUP: &str = "procs";

/// What a process of this workload does (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Role {
    BusProducer,
    BusWorker,
    RawProducer,
    RawWorker,
}

/// W7 for the bus and for raw fred, alternating, `--repeat` times.
pub(crate) async fn phase_procs(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let exe = std::env::current_exe()?;
    let mut s = [(); 4].map(|_| Samples::default());
    for i in 0..args.repeat {
        let mut line = format!("processes {}/{}:", i + 1, args.repeat);
        for (side, (publish, total)) in [("bus", (0, 1)), ("raw", (2, 3))] {
            let bus = run.bus(&format!("procs-{side}-{i}")).await?;
            let (published, drained) = pair(&exe, side, args, run.url(), &bus).await?;
            s[publish].push(published);
            s[total].push(drained);
            line += &format!(" {side}: publish {published:.0}/s, end to end {drained:.0}/s;");
            delete_prefix(&bus).await?;
        }
        progress(&line);
    }
    report.procs_publish_per_s = report.record("procs_publish_per_s", &s[0]);
    report.procs_drain_per_s = report.record("procs_drain_per_s", &s[1]);
    report.raw_procs_publish_per_s = report.record("raw_procs_publish_per_s", &s[2]);
    report.raw_procs_drain_per_s = report.record("raw_procs_drain_per_s", &s[3]);
    Ok(())
}

/// One producer/worker pair of `side` (`bus` or `raw`) under `bus`'s prefix: (publish rate of
/// the producer, end-to-end rate).
async fn pair(
    exe: &std::path::Path,
    side: &str,
    args: &Args,
    url: &str,
    bus: &Bus,
) -> BoxResult<(f64, f64)> {
    let spawn = |role: &str| -> BoxResult<(Child, Lines<BufReader<ChildStdout>>)> {
        let mut child = Command::new(exe)
            .args(["--role", role, "--prefix", bus.prefix()])
            .args(["--events", &args.events.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .env("REDIS_URL", url)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        Ok((child, BufReader::new(out).lines()))
    };
    let (mut worker, mut worker_out) = spawn(&format!("{side}-worker"))?;
    expect_line(&mut worker_out, "ready").await?;
    let started = Instant::now();
    let (mut producer, mut producer_out) = spawn(&format!("{side}-producer"))?;
    let published = expect_line(&mut producer_out, "published").await?;
    expect_line(&mut worker_out, "done").await?;
    let total = started.elapsed().as_secs_f64();
    producer.wait().await?;
    worker.wait().await?;
    let publish_s: f64 = published.parse()?;
    let n = args.events as f64;
    Ok((n / publish_s.max(1e-9), n / total.max(1e-9)))
}

/// Waits (at most [`CHILD_DEADLINE`]) for the child's line `<word>[ <rest>]`; returns `<rest>`.
async fn expect_line(out: &mut Lines<BufReader<ChildStdout>>, word: &str) -> BoxResult<String> {
    let line = tokio::time::timeout(CHILD_DEADLINE, out.next_line())
        .await
        .map_err(|_| format!("no `{word}` line from the child within {CHILD_DEADLINE:?}"))??
        .ok_or_else(|| format!("the child ended before its `{word}` line"))?;
    match line.split_once(' ') {
        Some((w, rest)) if w == word => Ok(rest.to_owned()),
        None if line == word => Ok(String::new()),
        _ => Err(format!("expected `{word}` from the child, got {line:?}").into()),
    }
}

/// Runs one child process's role and prints its protocol lines on stdout.
pub(crate) async fn run_role(role: Role, args: &Args, prefix: &str) -> BoxResult<()> {
    // What users install: a fmt subscriber at warn (the bus logs nothing at this level here, but
    // every span and event macro is checked against it).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let bus = Bus::builder().prefix(prefix).connect(&url).await?;
    let n = args.events;
    match role {
        Role::BusProducer | Role::RawProducer => {
            let t = Instant::now();
            if role == Role::BusProducer {
                publish_batches(&bus, n, 1_000, 4).await?;
            } else {
                let key = bus.stream_key(Load::STREAM)?;
                raw::xadd_pipelined(bus.redis(), &key, n, 1_000, 4).await?;
            }
            println!("published {}", t.elapsed().as_secs_f64());
        }
        Role::BusWorker => {
            let handled = Arc::new(AtomicU64::new(0));
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let done_tx = std::sync::Mutex::new(Some(done_tx));
            let h = handled.clone();
            let sub = subscriber_fn(
                SubscriberOptions::new(GROUP).concurrency(args.concurrency),
                move |_: Load, _| {
                    if h.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        if let Some(tx) = done_tx.lock().ok().and_then(|mut t| t.take()) {
                            let _ = tx.send(());
                        }
                    }
                    async {}
                },
            );
            let worker = bus.worker().subscribe(sub).start().await?;
            println!("ready");
            tokio::time::timeout(CHILD_DEADLINE, done_rx)
                .await
                .map_err(|_| "the worker did not handle every event in time")??;
            println!("done");
            worker.shutdown().await?;
        }
        Role::RawWorker => {
            let key = bus.stream_key(Load::STREAM)?;
            println!("ready");
            raw::drain(bus.redis(), &key, GROUP, n, 256).await?;
            println!("done");
        }
    }
    bus.close().await;
    Ok(())
}
