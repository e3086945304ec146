//! `redis-benchmark` XADD on the same server, for context.

use benches::{BoxResult, BODY};
use bus_core::testing::delete_prefix;

use crate::harness::{progress, Run};
use crate::report::{fmt_rate, Report};

/// `redis-benchmark -q -P 32 -c 50 -n 200000 XADD` on a key under the run's prefix; the figure is
/// `null` when redis-benchmark is missing or fails.
pub(crate) async fn phase_rb(run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let bus = run.bus("rb").await?;
    let key = format!("{}:rb", bus.prefix());
    report.redis_benchmark_xadd_per_s = redis_benchmark(run.url(), &key).await;
    progress(&format!(
        "redis-benchmark XADD -P 32 -c 50: {}",
        fmt_rate(report.redis_benchmark_xadd_per_s)
    ));
    delete_prefix(&bus).await?;
    Ok(())
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
