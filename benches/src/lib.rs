//! Shared pieces of the Streambus load generator (`src/bin/loadgen/`) and the codec
//! micro-benchmarks (`benches/codec.rs`): the load event, a monotonic clock for latencies, peak-RSS
//! reading, latency summaries and the hand-written fred loops that give the raw ceilings.

use std::sync::OnceLock;
use std::time::Instant;

use bus_core::Event;
use serde::{Deserialize, Serialize};

pub mod raw;

/// Errors of the load generator: anything that can be shown.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`BoxError`].
pub type BoxResult<T> = Result<T, BoxError>;

/// A 100-byte string: the bulk of every payload.
pub const BODY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789abcdefghijklmnopqrstuvwxyz_";

/// The event every workload publishes: a sequence number, the publish time (nanoseconds since the
/// process-wide [`now_ns`] base, so latencies measured in the same process are monotonic), and a
/// 100-byte body. MessagePack-encoded it is about 130 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[event(stream = "load")]
pub struct Load {
    /// Sequence number, `0..N`.
    pub seq: u64,
    /// When it was published, in [`now_ns`] time.
    pub sent_ns: u64,
    /// [`BODY`].
    pub body: String,
}

impl Load {
    /// Event `seq`, stamped now.
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            sent_ns: now_ns(),
            body: BODY.to_owned(),
        }
    }
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since a process-wide monotonic base (first call).
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// Microseconds from `sent_ns` (a [`now_ns`] stamp) to now.
pub fn since_us(sent_ns: u64) -> u64 {
    now_ns().saturating_sub(sent_ns) / 1_000
}

/// A latency histogram in microseconds (1 µs … 10 min, 3 significant digits).
pub fn latency_histogram() -> BoxResult<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// p50 / p99 / max of a latency histogram in microseconds, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1_000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// A line of `/proc/self/status` (`VmHWM`, `VmRSS`, …) in MiB; `None` where there is no procfs.
pub fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The process's peak resident set size (`VmHWM`), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM")
}

/// The process's current resident set size (`VmRSS`), MiB.
pub fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS")
}

/// CPU time (user + system) this process has used so far, in seconds, from `/proc/self/stat`
/// (clock ticks, assumed 100 per second: 10 ms resolution); `None` where there is no procfs.
pub fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces): state is field 3, utime 14,
    // stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time (user + system) the Redis server has used so far, in seconds (`INFO cpu`).
pub async fn redis_cpu_s(client: &fred::prelude::Client) -> Option<f64> {
    use fred::prelude::*;
    let info: String = client.info(Some(fred::types::InfoKind::Cpu)).await.ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Client and server CPU used over a measured interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// Seconds of CPU this process used.
    pub client_s: f64,
    /// Seconds of CPU the Redis server used.
    pub redis_s: f64,
}

/// Starts measuring CPU use; [`CpuMeter::stop`] gives the use since.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    client: Option<f64>,
    redis: Option<f64>,
}

impl CpuMeter {
    /// Reads both counters now.
    pub async fn start(client: &fred::prelude::Client) -> Self {
        Self {
            client: process_cpu_s(),
            redis: redis_cpu_s(client).await,
        }
    }

    /// The CPU used since [`start`](Self::start) (0 where a counter could not be read).
    pub async fn stop(self, client: &fred::prelude::Client) -> CpuUse {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (b - a).max(0.0),
            _ => 0.0,
        };
        CpuUse {
            client_s: d(self.client, process_cpu_s()),
            redis_s: d(self.redis, redis_cpu_s(client).await),
        }
    }
}

/// Logs on stderr how the end-of-run key clean-up went (`tool` names the binary).
pub fn report_cleanup<E: std::fmt::Display>(
    tool: &str,
    deleted: &Result<u64, E>,
    started: Instant,
) {
    match deleted {
        Ok(n) => eprintln!(
            "[{tool}] deleted {n} keys; took {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("[{tool}] clean-up failed: {e}"),
    }
}
