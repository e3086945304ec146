//! The Markdown table of every workload, raw ceiling and ratio.

use benches::Load;

use super::Report;
use crate::workloads::drain::{RAW_BOUNDED_READS, RAW_CMD_COUNT, RAW_DRAIN_COUNTS};
use crate::workloads::publish::{BATCH_SHAPES, MINIMAL_PIPELINE_SHAPE, RAW_PIPELINE_SHAPES};

pub(crate) fn fmt_rate(v: Option<f64>) -> String {
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

/// Prints the header line and the Markdown table of every workload, raw ceiling and ratio.
pub(crate) fn print_table(r: &Report) {
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
        &format!(
            "W2 drain, 1 worker, concurrency {}, default options (adaptive read-ahead)",
            r.concurrency
        ),
        "drain",
    ));
    rows.push(series(
        &format!(
            "W2s drain, concurrency {}, prefetch(0) (strict back-pressure)",
            r.concurrency
        ),
        "drain_strict",
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
    rows.push((
        "W3 latency p99, bus / raw, at the high rate".into(),
        format!(
            "{} / {}",
            r.latency_p99_ms_20k
                .map_or("–".into(), |v| format!("{v:.3} ms")),
            r.raw_latency_p99_ms_20k
                .map_or("–".into(), |v| format!("{v:.3} ms"))
        ),
        r.latency_rate_per_s_20k
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
    let w6 = format!(
        "{} events, concurrency {}, 5 ms handlers",
        crate::workloads::blocking::events(r.events),
        r.concurrency
    );
    rows.push(series(
        &format!("W6 awaited handler (tokio::time::sleep), {w6}"),
        "awaited_handler",
    ));
    rows.push(series(
        &format!("W6 blocking mode (std::thread::sleep), {w6}"),
        "blocking_handler",
    ));
    let rate = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}/s"));
    rows.push((
        "W7 separate processes, tracing on: publish / end to end (bus)".into(),
        format!(
            "{} / {}",
            rate(r.procs_publish_per_s),
            rate(r.procs_drain_per_s)
        ),
        "publish_batch 1000 × 4 in one process, a worker in another".into(),
    ));
    rows.push((
        "W7 separate processes: publish / end to end (raw fred)".into(),
        format!(
            "{} / {}",
            rate(r.raw_procs_publish_per_s),
            rate(r.raw_procs_drain_per_s)
        ),
        "pipelined XADD 1000 × 4; XREADGROUP COUNT 256".into(),
    ));
    for (batch, in_flight) in RAW_PIPELINE_SHAPES {
        rows.push(series(
            &format!("raw XADD pipeline {batch} × {in_flight} in flight"),
            &format!("raw_xadd_pipeline_{batch}x{in_flight}"),
        ));
    }
    rows.push(series("raw XADD, 1000 concurrent", "raw_xadd_concurrent"));
    rows.push(series(
        "raw XADD, awaited one by one",
        "raw_sequential_xadd",
    ));
    let (batch, in_flight) = MINIMAL_PIPELINE_SHAPE;
    rows.push(series(
        &format!("raw XADD, minimal 1-field entry, pipeline {batch} × {in_flight}"),
        &format!("minimal_xadd_pipeline_{batch}x{in_flight}"),
    ));
    for count in RAW_DRAIN_COUNTS {
        rows.push(series(
            &format!("raw drain XREADGROUP COUNT {count}"),
            &format!("raw_drain_count{count}"),
        ));
    }
    rows.push(series(
        &format!("raw drain, minimal 1-field entries, XREADGROUP COUNT {RAW_CMD_COUNT}"),
        &format!("raw_drain_minimal_count{RAW_CMD_COUNT}"),
    ));
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
        "redis-benchmark XADD -P 32 -c 50, minimal entry".into(),
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
        "publish_single_ratio = W1a / raw XADD awaited one by one".into(),
        fmt_ratio(r.publish_single_ratio, "≥ 0.9", |v| v >= 0.9),
        String::new(),
    ));
    rows.push((
        "publish_ratio_minimal = best batch / minimal-entry raw XADD".into(),
        fmt_ratio(r.publish_ratio_minimal, "≥ 0.8", |v| v >= 0.8),
        r.redis_cpu_ratio_publish.map_or(String::new(), |v| {
            format!("Redis CPU per event: {v:.2} × the minimal entry's")
        }),
    ));
    rows.push((
        "redis_cpu_ratio_entry = Redis CPU/XADD, version 2 entry / minimal entry".into(),
        fmt_ratio(r.redis_cpu_ratio_entry, "≤ 1.25", |v| v <= 1.25),
        r.redis_cpu_ratio_entry_v1.map_or(String::new(), |v| {
            format!("redis-benchmark -P 32; version 1 (six fields): {v:.2}")
        }),
    ));
    rows.push((
        "drain_ratio = W2 / best raw drain".into(),
        fmt_ratio(r.drain_ratio, "≥ 0.8", |v| v >= 0.8),
        r.drain_ratio_paired
            .map_or(String::new(), |v| format!("paired per repeat: {v:.2}")),
    ));
    rows.push((
        "drain_ratio_minimal = W2 / minimal raw drain".into(),
        fmt_ratio(r.drain_ratio_minimal, "≥ 0.8", |v| v >= 0.8),
        String::new(),
    ));
    rows.push((
        "drain_strict_ratio = W2s / best raw drain".into(),
        r.drain_strict_ratio
            .map_or_else(|| "–".into(), |v| format!("{v:.2}")),
        "the strict back-pressure of prefetch(0), for comparison".into(),
    ));
    rows.push((
        "redis_cpu_ratio_drain = Redis CPU/event W2 / minimal raw drain".into(),
        fmt_ratio(r.redis_cpu_ratio_drain, "≤ 1.25", |v| v <= 1.25),
        "INFO cpu; per command below".into(),
    ));
    rows.push((
        format!("drain_ratio_bounded = W2s / best raw drain ≤ {c} in flight"),
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
        fmt_ratio(r.fanout_ratio, "≥ 2.5", |v| v >= 2.5),
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
        "latency_ratio_20k = W3 p99 / raw p99 at the high rate".into(),
        fmt_ratio(r.latency_ratio_20k, "≤ 1.5", |v| v <= 1.5),
        String::new(),
    ));
    rows.push((
        "blocking_ratio = W6 blocking mode / W6 awaited".into(),
        fmt_ratio(r.blocking_ratio, "≥ 0.8", |v| v >= 0.8),
        r.medians
            .get("blocking_ratio_paired")
            .map_or(String::new(), |v| format!("paired per repeat: {v:.2}")),
    ));
    rows.push((
        "procs_drain_ratio = W7 end to end, bus / raw".into(),
        fmt_ratio(r.procs_drain_ratio, "≥ 0.8", |v| v >= 0.8),
        r.procs_publish_ratio
            .map_or(String::new(), |v| format!("publish: {v:.2}")),
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
