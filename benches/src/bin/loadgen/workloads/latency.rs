//! W3 (latency through the bus at a fixed publish rate) and the raw latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::raw;
use benches::{latency_histogram, since_us, BoxResult, LatencySummary, Load};
use bus_core::testing::delete_prefix;
use bus_core::{subscriber_fn, Bus, Context, SubscriberOptions};

use crate::harness::{progress, RawSide, Run};
use crate::report::Report;
use crate::Args;

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

/// One latency measurement: p50, p99, max and the rate achieved.
struct Measured {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rate: f64,
}

/// W3 and the raw latency, one after the other, at `--rate` and again at `--high-rate`.
pub(crate) async fn phase_latency(
    args: &Args,
    run: &mut Run,
    report: &mut Report,
) -> BoxResult<()> {
    let rates = [Some(args.rate), args.high_rate()];
    for (i, rate) in rates.into_iter().flatten().enumerate() {
        let high = i == 1;
        if args.wants("latency") {
            let bus = run.bus(if high { "latency20k" } else { "latency" }).await?;
            let (hist, achieved) =
                bus_latency(&bus, rate, args.latency_secs, args.concurrency).await?;
            let l = LatencySummary::of(&hist);
            progress(&format!(
                "W3 latency at {achieved:.0}/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
                l.p50_ms, l.p99_ms, l.max_ms, l.count
            ));
            delete_prefix(&bus).await?;
            let m = Measured {
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
                max_ms: l.max_ms,
                rate: achieved,
            };
            if high {
                report.latency_p99_ms_20k = Some(m.p99_ms);
                report.latency_rate_per_s_20k = Some(m.rate);
            } else {
                report.latency_p50_ms = Some(m.p50_ms);
                report.latency_p99_ms = Some(m.p99_ms);
                report.latency_max_ms = Some(m.max_ms);
                report.latency_rate_per_s = Some(m.rate);
            }
        }
        if args.wants("raw") {
            let raw = RawSide::new(run, if high { "rawlatency20k" } else { "rawlatency" }).await?;
            let outcome = raw::latency(&raw.client, &raw.key, rate, args.latency_secs).await;
            raw.close().await?;
            let (hist, achieved) = outcome?;
            let l = LatencySummary::of(&hist);
            progress(&format!(
                "raw latency at {achieved:.0}/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            ));
            if high {
                report.raw_latency_p99_ms_20k = Some(l.p99_ms);
            } else {
                report.raw_latency_p50_ms = Some(l.p50_ms);
                report.raw_latency_p99_ms = Some(l.p99_ms);
                report.raw_latency_max_ms = Some(l.max_ms);
            }
        }
    }
    Ok(())
}
