//! Streambus load generator: throughput, drain, fan-out, retry, blocking-handler and latency
//! workloads against a real Redis, next to raw fred ceilings measured in the same run with the same
//! entries.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen -- [--json] [--events N] [--latency-secs S]
//!     [--rate R] [--high-rate R2] [--repeat K] [--concurrency C] [--only LIST] [--big] [--quick]
//! ```
//!
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`).
//! - `--events N`: events per workload (default 100 000).
//! - `--latency-secs S` / `--rate R`: the latency workloads publish R events/s for S s (2 000, 10).
//! - `--repeat K`: throughput workloads run K times; the median is reported with the range
//!   (default 3).
//! - `--concurrency C`: handler concurrency of every subscriber (default 32).
//! - `--only LIST`: comma-separated subset of
//!   `drain,fanout,retry,blocking,publish,latency,raw,rb,procs,big` (for profiling one workload);
//!   skipped metrics are `null`. `blocking` drains min(N, 20 000) events with 5 ms handlers,
//!   awaited and in blocking mode. `procs` runs a producer and a worker as separate processes
//!   with a `tracing` subscriber installed, as users do, next to raw fred processes.
//! - `--high-rate R2`: the latency workloads run again at R2 events/s (default 20 000; 0: not).
//! - `--quick`: a short run for CI (20 000 events, one repeat, 2 s latency runs, no blocking, rb
//!   or big workload) that exits with an error when a ratio collapses (see `Report::collapsed`).
//! - `--big`: also drain a 1 000 000-event backlog and report the RSS peak of that phase.
//! - `--json`: end with one JSON line of every metric.
//!
//! `--events`, `--latency-secs`, `--rate`, `--repeat` and `--concurrency` must be at least 1.
//! `--help` prints the same list.
//!
//! Every key lives under a unique prefix (`loadgen-<random>-<workload>`) and is deleted at the
//! end, also on error or Ctrl-C.
//!
//! Modules: this file has the command line and runs the phases in order; `harness` the run
//! (prefix, buses, clean-up), the raw side and the shared publish/drain helpers; `stats` the
//! samples of repeated metrics; `workloads` one module per phase; `report` the table and the JSON
//! line; `commandstats` the Redis CPU per command (`INFO commandstats` deltas) of W2, the raw
//! COUNT 256 drain and W5; `tests` the command line's tests.

mod commandstats;
mod harness;
mod report;
mod stats;
mod workloads;

use std::time::Instant;

use benches::BoxResult;
use bus_core::testing::unique_prefix;
use clap::Parser;

use crate::harness::{progress, redis_version, Run};
use crate::report::Report;

/// The workloads `--only` accepts.
const WORKLOADS: [&str; 10] = [
    "drain", "fanout", "retry", "blocking", "publish", "latency", "raw", "rb", "procs", "big",
];

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "Streambus load generator: throughput, drain, fan-out, retry, blocking-handler and \
             latency workloads against a real Redis, next to raw fred ceilings measured in the \
             same run with the same entries.",
    after_help = "REDIS_URL: the Redis to load (default redis://127.0.0.1:6379). Every key lives \
                  under a unique prefix (loadgen-<random>-<workload>) and is deleted at the end, \
                  also on error or Ctrl-C.",
    // As before clap: a flag given twice takes its last value.
    args_override_self = true
)]
struct Args {
    /// End with one JSON line of every metric.
    #[arg(long)]
    json: bool,

    /// Events per workload.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        value_parser = at_least_one::<u64>
    )]
    events: u64,

    /// The latency workloads publish --rate events/s for this many seconds.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 10,
        value_parser = at_least_one::<u64>
    )]
    latency_secs: u64,

    /// Events per second the latency workloads publish.
    #[arg(
        long,
        value_name = "R",
        default_value_t = 2_000,
        value_parser = at_least_one::<u64>
    )]
    rate: u64,

    /// The latency workloads run again at this rate (0: not at all).
    #[arg(long, value_name = "R", default_value_t = 20_000)]
    high_rate: u64,

    /// A short run for CI (about 20 s): 20 000 events, one repeat, 2 s latency runs, no
    /// blocking, rb or big workload; exits with an error when a ratio collapses (drain ratio
    /// < 0.3, publish ratio < 0.4, latency p99 > 3 × raw and > 5 ms).
    #[arg(long)]
    quick: bool,

    /// Throughput workloads run K times; the median is reported with the range.
    #[arg(
        long,
        value_name = "K",
        default_value_t = 3,
        value_parser = at_least_one::<usize>
    )]
    repeat: usize,

    /// Handler concurrency of every subscriber.
    #[arg(
        long,
        value_name = "C",
        default_value_t = 32,
        value_parser = at_least_one::<usize>
    )]
    concurrency: usize,

    /// Comma-separated subset of drain,fanout,retry,blocking,publish,latency,raw,rb,procs,big
    /// (for profiling one workload); skipped metrics are null. blocking: min(--events, 20000)
    /// events with 5 ms handlers, awaited vs blocking mode. procs: producer and worker in
    /// separate processes with a tracing subscriber, bus and raw.
    #[arg(long, value_name = "LIST", value_parser = parse_only)]
    only: Option<Only>,

    /// Also drain a 1 000 000-event backlog and report the RSS peak of that phase.
    #[arg(long)]
    big: bool,

    /// Internal: run as one process of the separate-process workload.
    #[arg(long, hide = true, value_enum)]
    role: Option<workloads::procs::Role>,

    /// Internal: the key prefix of that process.
    #[arg(long, hide = true, default_value = "")]
    prefix: String,
}

/// A count flag: a whole number of at least 1.
fn at_least_one<T>(value: &str) -> Result<T, String>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    let n: T = value.parse().map_err(|e: T::Err| e.to_string())?;
    if n == T::default() {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// The workloads named by `--only`.
#[derive(Debug, Clone)]
struct Only(Vec<String>);

/// `--only`: comma-separated names from [`WORKLOADS`], blanks around them and empty items ignored.
fn parse_only(value: &str) -> Result<Only, String> {
    let list: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = list.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        return Err(format!(
            "unknown workload {bad:?}; known: {}",
            WORKLOADS.join(",")
        ));
    }
    Ok(Only(list))
}

impl Args {
    /// The command line of this process (exits with clap's message on a bad one).
    fn from_cli() -> Self {
        Args::parse().settled()
    }

    /// Applies the flags that imply others (`--only big`, `--quick`).
    fn settled(mut self) -> Self {
        let args = &mut self;
        args.big |= args.only_has("big");
        if args.quick {
            args.events = 20_000;
            args.repeat = 1;
            args.latency_secs = 2;
        }
        self
    }

    /// The second latency rate, if any.
    fn high_rate(&self) -> Option<u64> {
        (self.high_rate > 0).then_some(self.high_rate)
    }

    fn only_has(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_some_and(|Only(list)| list.iter().any(|w| w == workload))
    }

    fn wants(&self, workload: &str) -> bool {
        match &self.only {
            Some(_) => self.only_has(workload),
            None if self.quick => !matches!(workload, "big" | "blocking" | "rb"),
            None => workload != "big" || self.big,
        }
    }
}

async fn run_all(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    report.events = args.events;
    report.repeat = args.repeat;
    report.concurrency = args.concurrency;
    // Consume side first, so the peak RSS read after it reflects the workers.
    if args.wants("drain") || args.wants("raw") {
        workloads::drain::phase_drain(args, run, report).await?;
    }
    if args.wants("fanout") {
        workloads::fanout::phase_fanout(args, run, report).await?;
    }
    if args.wants("retry") {
        workloads::retry::phase_retry(args, run, report).await?;
    }
    if args.wants("drain") || args.wants("fanout") || args.wants("retry") {
        report.worker_peak_rss_mib = benches::peak_rss_mib();
    }
    // After the RSS read: its blocking-pool threads are not part of the worker figure.
    if args.wants("blocking") {
        workloads::blocking::phase_blocking(args, run, report).await?;
    }
    if args.wants("publish") || args.wants("raw") {
        workloads::publish::phase_publish(args, run, report).await?;
    }
    if args.wants("rb") {
        workloads::rb::phase_rb(args, run, report).await?;
    }
    if args.wants("latency") || args.wants("raw") {
        workloads::latency::phase_latency(args, run, report).await?;
    }
    if args.wants("procs") {
        workloads::procs::phase_procs(args, run, report).await?;
    }
    if args.wants("big") {
        workloads::big::phase_big(args, run, report).await?;
    }
    report.process_peak_rss_mib = benches::peak_rss_mib();
    Ok(())
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let _ = benches::now_ns(); // fix the monotonic base
    let args = Args::from_cli();
    if let Some(role) = args.role {
        return workloads::procs::run_role(role, &args, &args.prefix).await;
    }
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut run = Run::new(url, unique_prefix("loadgen"));
    progress(&format!("prefix {}-*, {} events", run.base(), args.events));
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
    report::print_table(&report);
    commandstats::print_tables(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if args.quick {
        let collapsed = report.collapsed();
        for c in &collapsed {
            eprintln!("loadgen guard: {c}");
        }
        if !collapsed.is_empty() {
            return Err(format!("{} ratio(s) collapsed", collapsed.len()).into());
        }
        eprintln!("loadgen guard: no ratio collapsed");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
