//! `redis-benchmark` XADD on the same server: the server's own cost of each entry format, with no
//! client of ours in the way.

use benches::{BoxResult, CpuMeter, BODY};
use bus_core::testing::delete_prefix;
use bus_core::testing::RedisAccess;

use crate::commandstats::{CmdMeter, Tally};
use crate::harness::{progress, Run};
use crate::report::{fmt_rate, Report};
use crate::stats::Samples;
use crate::Args;

/// XADDs per redis-benchmark run.
const RB_REQUESTS: u64 = 200_000;

/// The entry formats compared: a name and the field/value arguments of one entry (the same 100-byte
/// body stands for the payload; the id and time are fixed strings of the real lengths).
fn shapes() -> [(&'static str, Vec<String>); 3] {
    const ID: &str = "0192f3a4-5b6c-7d8e-9f01-23456789abcd";
    const TS: &str = "1764640000000";
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        ("minimal", own(&["p", BODY])),
        (
            "v2",
            own(&["e", &format!("2 {ID} {TS} msgpack Load\n{BODY}")]),
        ),
        (
            "v1",
            own(&[
                "v", "1", "id", ID, "type", "Load", "ts", TS, "ct", "msgpack", "p", BODY,
            ]),
        ),
    ]
}

/// `redis-benchmark -q -P 32 -c 50 -n 200000 XADD` with each entry format, `--repeat` times in
/// turn: requests/s, Redis CPU per XADD (`INFO cpu`) and per command (`INFO commandstats`). The
/// figures are `null` when redis-benchmark is missing or fails.
pub(crate) async fn phase_rb(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let bus = run.bus("rb").await?;
    let client = bus.redis();
    let key = format!("{}:rb", bus.prefix());
    let mut rates: Vec<Samples> = shapes().iter().map(|_| Samples::default()).collect();
    let mut cpu: Vec<Samples> = shapes().iter().map(|_| Samples::default()).collect();
    let mut cmds: Vec<Tally> = shapes().iter().map(|_| Tally::default()).collect();
    for _ in 0..args.repeat {
        for (i, (name, fields)) in shapes().iter().enumerate() {
            let stats = CmdMeter::start(client).await;
            let meter = CpuMeter::start(client).await;
            let Some(rate) = redis_benchmark(run.url(), &key, fields).await else {
                return Ok(());
            };
            let used = meter.stop(client).await;
            cmds[i].add(stats.stop(client).await.as_ref(), RB_REQUESTS);
            rates[i].push(rate);
            cpu[i].push(used.redis_s * 1e6 / RB_REQUESTS as f64);
            progress(&format!(
                "redis-benchmark XADD -P 32 -c 50, {name} entry: {}, Redis {:.2} µs/XADD",
                fmt_rate(Some(rate)),
                used.redis_s * 1e6 / RB_REQUESTS as f64
            ));
            delete_prefix(&bus).await?;
        }
    }
    for (i, (name, _)) in shapes().iter().enumerate() {
        report.record(&format!("rb_{name}_per_s"), &rates[i]);
        report.record(&format!("rb_{name}_redis_cpu_us"), &cpu[i]);
        report.record_commands(&format!("rb_{name}"), &cmds[i]);
    }
    report.redis_benchmark_xadd_per_s = report.medians.get("rb_minimal_per_s").copied();
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

/// `redis-benchmark -q -P 32 -c 50 -n 200000 XADD <key> * <fields>`: requests/s, or `None`
/// when redis-benchmark is not installed or its output is not understood.
async fn redis_benchmark(url: &str, key: &str, fields: &[String]) -> Option<f64> {
    let mut args = redis_benchmark_target(url)?;
    let n = RB_REQUESTS.to_string();
    args.extend(
        ["-q", "-P", "32", "-c", "50", "-n", &n, "XADD", key, "*"]
            .into_iter()
            .map(String::from)
            .chain(fields.iter().cloned()),
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
