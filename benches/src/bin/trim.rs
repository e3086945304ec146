//! Trimming benchmark: how long the slowest command of a trim blocks Redis on a long stream.
//!
//! ```text
//! cargo run --release -p benches --bin trim -- [--json] [--entries N] [--keep K] [--skip-old]
//! ```
//!
//! - `--entries N`: the stream's length before trimming (default 1 000 000 entries of ~250 B).
//! - `--keep K`: `Retention::min_count` (default 100 000).
//! - `--skip-old`: do not run the 0.1 trim script for comparison.
//! - `--json`: end with one JSON line of every figure.
//!
//! How it runs, on a `redis-server` of its own (started on a free loopback port, stopped at the
//! end, so the slow log holds only this run's commands):
//!
//! 1. The stream is filled with N entries (server-side, 10 000 per script, untimed) and a group is
//!    created at `$`: everything is delivered and acknowledged, so only the minimum count K keeps
//!    entries and N − K must go.
//! 2. `slowlog-log-slower-than 0` logs every command with its duration; the slow log is reset.
//!    A second connection sends `PING` in a loop for the whole trim and keeps the largest round
//!    trip (what any other client of that Redis would wait at worst).
//! 3. `Bus::trim` runs (bounded steps). Reported: entries removed, wall time, steps (scripts run),
//!    the slowest command and the 99th percentile of the logged commands, the largest `PING`
//!    round trip. The goal is a slowest command ≤ 5 ms.
//! 4. Unless `--skip-old`, the same again with the core of the 0.1 trim script (one script that
//!    walked the kept entries with `XREVRANGE … COUNT min_count`, then trimmed), for comparison.
//!
//! Nothing is asserted; figures are reported.

use bus_core::testing::RedisAccess;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::BoxResult;
use bus_core::testing::RedisServer;
use bus_core::{Bus, Retention};
use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use serde::Serialize;

/// What made the 0.1 trim script slow, reduced to its core: inside one script, walk the newest
/// `min_count` entries with `XREVRANGE` to find the cut, then `XTRIM MINID` to it (the group
/// positions, read first, cost little and are left out).
const OLD_TRIM_LUA: &str = r#"
local r = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', tonumber(ARGV[2]))
if #r < tonumber(ARGV[2]) then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', r[#r][1])
"#;

const FILL_LUA: &str = r#"
local payload = string.rep('x', 200)
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'v', '1', 'type', 'Filler', 'p', payload)
end
return 1
"#;

#[derive(Debug, Serialize)]
struct Figures {
    variant: &'static str,
    entries: u64,
    keep: u64,
    removed: u64,
    wall_ms: f64,
    steps: usize,
    slowest_command_us: u64,
    slowest_command: String,
    p99_command_us: u64,
    max_ping_rtt_us: u64,
    goal_slowest_le_5ms: bool,
}

struct Args {
    json: bool,
    entries: u64,
    keep: u64,
    skip_old: bool,
}

fn parse_args() -> BoxResult<Args> {
    let mut a = Args {
        json: false,
        entries: 1_000_000,
        keep: 100_000,
        skip_old: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--skip-old" => a.skip_old = true,
            "--entries" => a.entries = it.next().ok_or("--entries N")?.parse()?,
            "--keep" => a.keep = it.next().ok_or("--keep K")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

async fn command(client: &Client, name: &'static str, args: Vec<Value>) -> BoxResult<Value> {
    Ok(client
        .custom(CustomCommand::new_static(name, None, false), args)
        .await?)
}

async fn fill(client: &Client, key: &str, n: u64) -> BoxResult<()> {
    let mut left = n;
    while left > 0 {
        let batch = left.min(10_000);
        let _: Value = client
            .eval(FILL_LUA, vec![key], vec![batch.to_string()])
            .await?;
        left -= batch;
    }
    Ok(())
}

/// Every slow-log entry as (duration µs, command name and first arguments).
async fn slowlog(client: &Client) -> BoxResult<Vec<(u64, String)>> {
    let v = command(client, "SLOWLOG", vec!["GET".into(), "1000000".into()]).await?;
    let Value::Array(entries) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries {
        let Value::Array(parts) = e else { continue };
        let us = parts.get(2).and_then(Value::as_u64).unwrap_or(0);
        let cmd = match parts.get(3) {
            Some(Value::Array(args)) => args
                .iter()
                .take(3)
                .filter_map(|a| a.as_string())
                .map(|a| {
                    a.split_whitespace()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(40)
                        .collect()
                })
                .collect::<Vec<String>>()
                .join(" "),
            _ => String::new(),
        };
        out.push((us, cmd));
    }
    Ok(out)
}

async fn run(variant: &'static str, bus: &Bus, client: &Client, args: &Args) -> BoxResult<Figures> {
    let key = bus.stream_key("trim")?;
    let _: u64 = client.del(key.as_str()).await?;
    fill(client, &key, args.entries).await?;
    let _: Value = client
        .xgroup_create(key.as_str(), "done", "$", true)
        .await?;
    command(
        client,
        "CONFIG",
        vec!["SET".into(), "slowlog-log-slower-than".into(), "0".into()],
    )
    .await?;
    command(
        client,
        "CONFIG",
        vec!["SET".into(), "slowlog-max-len".into(), "1000000".into()],
    )
    .await?;
    command(client, "SLOWLOG", vec!["RESET".into()]).await?;

    let pinger = client.clone_new();
    pinger.init().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let max_rtt = Arc::new(AtomicU64::new(0));
    let ping_task = {
        let (stop, max_rtt) = (stop.clone(), max_rtt.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _: Result<Value, _> = pinger.ping(None).await;
                max_rtt.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            let _ = pinger.quit().await;
        })
    };

    let started = Instant::now();
    let removed = if variant == "bounded steps (Bus::trim)" {
        bus.trim("trim", Retention::new().min_count(args.keep))
            .await?
    } else {
        let v: Value = client
            .eval(
                OLD_TRIM_LUA,
                vec![key.as_str()],
                vec!["0".to_owned(), args.keep.to_string()],
            )
            .await?;
        v.as_u64().unwrap_or(0)
    };
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    ping_task.await?;
    command(
        client,
        "CONFIG",
        vec![
            "SET".into(),
            "slowlog-log-slower-than".into(),
            "10000".into(),
        ],
    )
    .await?;

    // The pinger's commands are in the log too; the trim's are everything else.
    let mut log: Vec<(u64, String)> = slowlog(client)
        .await?
        .into_iter()
        .filter(|(_, c)| !c.eq_ignore_ascii_case("PING"))
        .collect();
    log.sort_by_key(|(us, _)| *us);
    let steps = log.iter().filter(|(_, c)| c.starts_with("EVAL")).count();
    let (slowest_us, slowest) = log.last().cloned().unwrap_or_default();
    let p99 = log
        .get((log.len() * 99 / 100).min(log.len().saturating_sub(1)))
        .map_or(0, |(us, _)| *us);
    let _: u64 = client.del(key.as_str()).await?;
    Ok(Figures {
        variant,
        entries: args.entries,
        keep: args.keep,
        removed,
        wall_ms: wall.as_secs_f64() * 1000.0,
        steps,
        slowest_command_us: slowest_us,
        slowest_command: slowest,
        p99_command_us: p99,
        max_ping_rtt_us: max_rtt.load(Ordering::Relaxed),
        goal_slowest_le_5ms: slowest_us <= 5_000,
    })
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let server = RedisServer::start()?;
    let bus = Bus::builder()
        .prefix("trim-bench")
        .command_timeout(Duration::from_secs(120))
        .connect(&server.url())
        .await?;
    let client = bus.redis().clone();
    let mut variants = vec!["bounded steps (Bus::trim)"];
    if !args.skip_old {
        variants.push("0.1 script (XREVRANGE walk)");
    }
    let mut all = Vec::new();
    for variant in variants {
        let f = run(variant, &bus, &client, &args).await?;
        eprintln!(
            "{:<30} removed {:>8} of {} (keep {}) in {:>8.1} ms, {:>4} steps; slowest command {:>7} µs ({}), p99 {:>5} µs; max PING round trip {:>7} µs; goal slowest ≤ 5 ms {}",
            f.variant,
            f.removed,
            f.entries,
            f.keep,
            f.wall_ms,
            f.steps,
            f.slowest_command_us,
            f.slowest_command,
            f.p99_command_us,
            f.max_ping_rtt_us,
            if f.goal_slowest_le_5ms { "met" } else { "missed" }
        );
        all.push(f);
    }
    if args.json {
        println!("{}", serde_json::to_string(&all)?);
    }
    bus.close().await;
    drop(server);
    Ok(())
}
