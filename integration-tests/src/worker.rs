//! The test worker: handles `Task` events and writes what it does to a ledger file, for the fault
//! tests and the chaos suite (see [`crate::procs`]). Run as the `test_worker` binary, or as
//! `chaos worker …` (so the chaos binary needs nothing else built).
//!
//! Arguments: `--url U --prefix P --group G --ledger FILE [--concurrency 8] [--vt-ms 1000]
//! [--max-attempts 5] [--grace-ms 10000] [--mover-ms 500] [--consumer NAME] [--more-groups A,B]
//! [--command-timeout-ms MS] [--timeout-ms MS] [--blocking] [--await-blocks] [--hang] [--threads N]`.
//! Prints `ready <consumer>` once reading; SIGTERM/Ctrl-C shut it down gracefully.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::procs::Task;
use bus_core::{subscriber_fn, Bus, HandlerError, SubscriberOptions};

fn arg(args: &[String], name: &str) -> Option<String> {
    let mut it = args.iter().cloned();
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

/// Busy CPU work for `d`, never yielding.
fn spin(d: Duration) {
    let until = std::time::Instant::now() + d;
    let mut x = 0u64;
    while std::time::Instant::now() < until {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a test worker process with command-line style `args` (without the program name) on a
/// runtime of its own (`--threads` worker threads); returns the process exit code.
pub fn run_worker_process(args: Vec<String>) -> i32 {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = arg(&args, "--threads").and_then(|v| v.parse().ok()) {
        builder.worker_threads(n);
    }
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(worker_main(args)),
        Err(e) => {
            eprintln!("runtime: {e}");
            2
        }
    }
}

/// Runs a test worker with command-line style `args` (without the program name) until SIGTERM or
/// Ctrl-C; returns the process exit code.
pub async fn worker_main(args: Vec<String>) -> i32 {
    let args = &args[..];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let (Some(url), Some(prefix), Some(group), Some(ledger)) = (
        arg(args, "--url"),
        arg(args, "--prefix"),
        arg(args, "--group"),
        arg(args, "--ledger"),
    ) else {
        eprintln!("usage: test_worker --url U --prefix P --group G --ledger FILE [options]");
        return 2;
    };
    let file = match OpenOptions::new().create(true).append(true).open(&ledger) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("cannot open ledger {ledger}: {e}");
            return 2;
        }
    };
    let mut builder = Bus::builder().prefix(prefix);
    if let Some(ms) = arg(args, "--command-timeout-ms").and_then(|v| v.parse().ok()) {
        builder = builder.command_timeout(Duration::from_millis(ms));
    }
    let bus = match builder.connect(&url).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("connect: {e}");
            return 3;
        }
    };
    let pid = std::process::id();
    let write = move |f: &Arc<Mutex<std::fs::File>>, line: String| {
        if let Ok(mut f) = f.lock() {
            // One write per line: O_APPEND keeps lines whole.
            let _ = f.write_all(line.as_bytes());
        }
    };
    let mut opts = SubscriberOptions::new(group.clone())
        .concurrency(num(args, "--concurrency", 8usize))
        .visibility_timeout(Duration::from_millis(num(args, "--vt-ms", 1000u64)))
        .max_attempts(num(args, "--max-attempts", 5u32))
        .backoff_min(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500))
        .block_timeout(Duration::from_millis(500));
    if let Some(ms) = arg(args, "--timeout-ms").and_then(|v| v.parse().ok()) {
        opts = opts.handler_timeout(Duration::from_millis(ms));
    }
    opts = opts.blocking(args.iter().any(|a| a == "--blocking"));
    let await_blocks = args.iter().any(|a| a == "--await-blocks");
    let hang = args.iter().any(|a| a == "--hang");
    let mut groups = vec![group];
    groups.extend(
        arg(args, "--more-groups")
            .unwrap_or_default()
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_owned),
    );
    let mut worker = bus
        .worker()
        .shutdown_grace(Duration::from_millis(num(args, "--grace-ms", 10_000u64)))
        .move_delayed_every(Duration::from_millis(num(args, "--mover-ms", 500u64)));
    for g in groups {
        let f2 = file.clone();
        let sub = subscriber_fn(opts.clone().with_group(g), move |t: Task, ctx| {
            let f = f2.clone();
            async move {
                let group = ctx.group().to_owned();
                write(
                    &f,
                    format!("start {} {} {pid} {group}\n", t.n, ctx.attempt()),
                );
                if t.poison {
                    std::process::abort();
                }
                if hang || ctx.attempt() <= t.hang_times {
                    std::future::pending::<()>().await;
                }
                if t.slow_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(t.slow_ms)).await;
                }
                if t.block_ms > 0 {
                    let d = Duration::from_millis(t.block_ms);
                    if await_blocks {
                        tokio::time::sleep(d).await;
                    } else {
                        std::thread::sleep(d);
                    }
                }
                if t.spin_ms > 0 {
                    spin(Duration::from_millis(t.spin_ms));
                }
                if ctx.attempt() <= t.fail_times {
                    return Err(HandlerError::retry(format!(
                        "planned failure {}",
                        ctx.attempt()
                    )));
                }
                write(
                    &f,
                    format!("done {} {} {pid} {group}\n", t.n, ctx.attempt()),
                );
                Ok(())
            }
        });
        worker = worker.subscribe(sub);
    }
    if let Some(c) = arg(args, "--consumer") {
        worker = worker.consumer_name(c);
    }
    let handle = match worker.start().await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("start: {e}");
            return 4;
        }
    };
    println!("ready {}", handle.consumer_name());
    let _ = std::io::stdout().flush();
    bus_core::shutdown_signal().await;
    match handle.shutdown().await {
        Ok(()) => {
            println!("stopped");
            0
        }
        Err(e) => {
            eprintln!("shutdown: {e}");
            5
        }
    }
}
