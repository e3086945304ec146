//! W1 (publish one by one, concurrently and in batches) and the raw XADD ceilings.

use bus_core::testing::RedisAccess;
use std::time::Instant;

use benches::raw;
use benches::{BoxError, BoxResult, CpuMeter, Load};
use bus_core::testing::delete_prefix;
use futures::{StreamExt, TryStreamExt};

use crate::harness::{progress, publish_batches, RawSide, Run};
use crate::report::Report;
use crate::stats::{Samples, Series};
use crate::Args;

/// W1c: (events per `publish_batch` call, calls in flight).
pub(crate) const BATCH_SHAPES: [(u64, usize); 3] = [(1_000, 4), (100, 16), (1_000, 1)];
/// The raw pipelines: the same shapes as the first two batch shapes.
pub(crate) const RAW_PIPELINE_SHAPES: [(u64, usize); 2] = [(1_000, 4), (100, 16)];
/// The raw pipeline shape also run with the minimal one-field entry.
pub(crate) const MINIMAL_PIPELINE_SHAPE: (u64, usize) = (1_000, 4);

/// W1 (sequential, concurrent, batches) and the raw XADD ceiling, alternating in each repeat.
pub(crate) async fn phase_publish(
    args: &Args,
    run: &mut Run,
    report: &mut Report,
) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = if args.wants("publish") {
        Some(run.bus("publish").await?)
    } else {
        None
    };
    let raw = if args.wants("raw") {
        Some(RawSide::new(run, "rawxadd").await?)
    } else {
        None
    };
    let mut seq = Series::default();
    let mut conc = Series::default();
    let mut batches: Vec<Series> = BATCH_SHAPES.iter().map(|_| Series::default()).collect();
    let mut pipes: Vec<Series> = RAW_PIPELINE_SHAPES
        .iter()
        .map(|_| Series::default())
        .collect();
    let mut raw_conc = Series::default();
    let mut raw_seq = Series::default();
    let mut minimal = Series::default();
    let mut paired = Samples::default();
    for i in 0..k {
        let mut line = format!("publish {}/{k}:", i + 1);
        let (mut bus_best, mut raw_best) = (0.0_f64, 0.0_f64);
        if let Some(bus) = &bus {
            let client = bus.redis();
            let meter = CpuMeter::start(client).await;
            let t = Instant::now();
            for s in 0..n {
                bus.publish(&Load::new(s)).await?;
            }
            let took = t.elapsed();
            let rate = seq.push(n, took, meter.stop(client).await);
            line += &format!(" W1a {rate:.0}/s;");
            delete_prefix(bus).await?;

            let meter = CpuMeter::start(client).await;
            let t = Instant::now();
            futures::stream::iter(0..n)
                .map(|s| async move {
                    bus.publish(&Load::new(s)).await?;
                    Ok::<(), BoxError>(())
                })
                .buffer_unordered(1_000)
                .try_collect::<()>()
                .await?;
            let took = t.elapsed();
            let rate = conc.push(n, took, meter.stop(client).await);
            line += &format!(" W1b {rate:.0}/s;");
            delete_prefix(bus).await?;
        }
        // Batch shapes and the raw pipelines of the same shape back to back, so each pair sees the
        // same machine conditions.
        for (j, ((batch, in_flight), s)) in BATCH_SHAPES.iter().zip(&mut batches).enumerate() {
            if let Some(bus) = &bus {
                let client = bus.redis();
                let meter = CpuMeter::start(client).await;
                let t = Instant::now();
                publish_batches(bus, n, *batch, *in_flight).await?;
                let took = t.elapsed();
                let rate = s.push(n, took, meter.stop(client).await);
                bus_best = bus_best.max(rate);
                line += &format!(" W1c {batch}x{in_flight} {rate:.0}/s;");
                delete_prefix(bus).await?;
            }
            if let (Some(raw), Some(((batch, in_flight), s))) =
                (&raw, RAW_PIPELINE_SHAPES.iter().zip(&mut pipes).nth(j))
            {
                let c = &raw.client;
                let meter = CpuMeter::start(c).await;
                let t = Instant::now();
                raw::xadd_pipelined(c, &raw.key, n, *batch, *in_flight).await?;
                let took = t.elapsed();
                let rate = s.push(n, took, meter.stop(c).await);
                raw_best = raw_best.max(rate);
                line += &format!(" raw pipeline {batch}x{in_flight} {rate:.0}/s;");
                raw.clear().await?;
            }
        }
        if let Some(raw) = &raw {
            let c = &raw.client;
            let meter = CpuMeter::start(c).await;
            let t = Instant::now();
            raw::xadd_sequential(c, &raw.key, n).await?;
            let took = t.elapsed();
            let rate = raw_seq.push(n, took, meter.stop(c).await);
            line += &format!(" raw awaited one by one {rate:.0}/s;");
            raw.clear().await?;

            let meter = CpuMeter::start(c).await;
            let t = Instant::now();
            raw::xadd_concurrent(c, &raw.key, n, 1_000).await?;
            let took = t.elapsed();
            let rate = raw_conc.push(n, took, meter.stop(c).await);
            raw_best = raw_best.max(rate);
            line += &format!(" raw concurrent {rate:.0}/s;");
            raw.clear().await?;

            let (batch, in_flight) = MINIMAL_PIPELINE_SHAPE;
            let meter = CpuMeter::start(c).await;
            let t = Instant::now();
            raw::xadd_pipelined_with(c, &raw.key, n, batch, in_flight, raw::minimal_entry_fields)
                .await?;
            let took = t.elapsed();
            let rate = minimal.push(n, took, meter.stop(c).await);
            line += &format!(" minimal-entry pipeline {rate:.0}/s");
            raw.clear().await?;
        }
        if bus_best > 0.0 && raw_best > 0.0 {
            paired.push(bus_best / raw_best);
        }
        progress(&line);
    }
    report.publish_ratio_paired = report.record("publish_ratio_paired", &paired);
    if bus.is_some() {
        report.publish_sequential_per_s = report.record_series("publish_sequential", &seq);
        report.publish_concurrent_per_s = report.record_series("publish_concurrent", &conc);
        for ((batch, in_flight), s) in BATCH_SHAPES.iter().zip(&batches) {
            report.record_series(&format!("publish_batch_{batch}x{in_flight}"), s);
        }
        report.publish_batch_per_s = report.best("publish_batch_");
    }
    if let Some(raw) = raw {
        for ((batch, in_flight), s) in RAW_PIPELINE_SHAPES.iter().zip(&pipes) {
            report.record_series(&format!("raw_xadd_pipeline_{batch}x{in_flight}"), s);
        }
        report.record_series("raw_xadd_concurrent", &raw_conc);
        report.raw_xadd_per_s = report.best("raw_xadd_");
        // After the best-of: one by one is never the best raw shape, and is compared with W1a.
        report.raw_xadd_sequential_per_s = report.record_series("raw_sequential_xadd", &raw_seq);
        let (batch, in_flight) = MINIMAL_PIPELINE_SHAPE;
        report.raw_xadd_minimal_per_s = report.record_series(
            &format!("minimal_xadd_pipeline_{batch}x{in_flight}"),
            &minimal,
        );
        raw.close().await?;
    }
    Ok(())
}
