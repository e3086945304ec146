//! W2 (one worker, one group draining a backlog: default options with the adaptive read-ahead,
//! strict back-pressure with `prefetch(0)`, and a fixed `prefetch`) and the raw drain ceilings,
//! among them the minimal raw loop: `COUNT 256` over entries of one field, the payload alone.

use benches::raw;
use benches::{BoxResult, CpuMeter};
use bus_core::testing::delete_prefix;

use crate::commandstats::{CmdMeter, Tally};
use crate::harness::{backlog, drain_with_worker, progress, RawSide, Run, Work};
use crate::report::Report;
use crate::stats::{Samples, Series};
use crate::Args;

/// `COUNT` of the unbounded raw drains.
pub(crate) const RAW_DRAIN_COUNTS: [u64; 3] = [32, 256, 1_000];
/// Concurrent reads the bounded raw drain splits its `concurrency` entries into.
pub(crate) const RAW_BOUNDED_READS: [u64; 3] = [1, 2, 4];
/// `COUNT` of the raw drain whose Redis CPU per command is reported (the minimal raw loop).
pub(crate) const RAW_CMD_COUNT: u64 = 256;

/// W2 (one worker, one group) and the raw drain ceiling, alternating in each repeat so both see
/// the same machine conditions.
pub(crate) async fn phase_drain(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = if args.wants("drain") {
        Some(run.bus("drain").await?)
    } else {
        None
    };
    let raw = if args.wants("raw") {
        Some(RawSide::new(run, "rawdrain").await?)
    } else {
        None
    };
    // W2, W2s, W2b.
    let mut w2 = [(); 3].map(|_| Series::default());
    let mut minimal = Series::default();
    let mut minimal_cmds = Tally::default();
    let mut raws: Vec<(u64, Series)> = RAW_DRAIN_COUNTS
        .iter()
        .map(|c| (*c, Series::default()))
        .collect();
    let mut bounded: Vec<(u64, Series)> = RAW_BOUNDED_READS
        .iter()
        .map(|r| (*r, Series::default()))
        .collect();
    let c = args.concurrency as u64;
    let mut paired = Samples::default();
    let (mut w2_cmds, mut raw_cmds) = (Tally::default(), Tally::default());
    for i in 0..k {
        let mut line = format!("drain {}/{k}:", i + 1);
        let mut bus_rate = 0.0;
        if let Some(bus) = &bus {
            // W2 (default options), W2s (strict back-pressure), W2b (a fixed read-ahead that
            // makes reads of 256).
            let fixed = 256usize.saturating_sub(args.concurrency);
            let variants: [(&str, Option<usize>); 3] = [
                ("W2", None),
                ("W2 strict", Some(0)),
                ("W2 prefetch", Some(fixed)),
            ];
            for (v, (label, prefetch)) in variants.into_iter().enumerate() {
                backlog(bus, n).await?;
                let d = drain_with_worker(
                    bus,
                    n,
                    &["drain"],
                    None,
                    Work::Nothing,
                    args.concurrency,
                    |o| match prefetch {
                        Some(p) => o.prefetch(p),
                        None => o,
                    },
                )
                .await?;
                let rate = w2[v].push(n, d.took, d.cpu);
                if v == 0 {
                    w2_cmds.add(d.cmds.as_ref(), n);
                    bus_rate = rate;
                }
                line += &format!(" {label} {rate:.0}/s;");
                delete_prefix(bus).await?;
            }
        }
        if let Some(raw) = &raw {
            raw::xadd_pipelined(&raw.client, &raw.key, n, 1_000, 4).await?;
            line += " raw COUNT";
            let mut raw_best = 0.0_f64;
            for (count, s) in &mut raws {
                let cmds = CmdMeter::start(&raw.client).await;
                let meter = CpuMeter::start(&raw.client).await;
                let took =
                    raw::drain(&raw.client, &raw.key, &format!("raw{count}"), n, *count).await?;
                let rate = s.push(n, took, meter.stop(&raw.client).await);
                let cmds = cmds.stop(&raw.client).await;
                if *count == RAW_CMD_COUNT {
                    raw_cmds.add(cmds.as_ref(), n);
                }
                raw_best = raw_best.max(rate);
                line += &format!(" {count}: {rate:.0}/s");
            }
            line += &format!("; raw ≤{c} in flight as");
            for (reads, s) in &mut bounded {
                let meter = CpuMeter::start(&raw.client).await;
                let group = format!("rawb{reads}");
                let took = raw::drain_bounded(&raw.client, &raw.key, &group, n, c, *reads).await?;
                let rate = s.push(n, took, meter.stop(&raw.client).await);
                line += &format!(" {reads}×{}: {rate:.0}/s", c / *reads);
            }
            raw.clear().await?;
            raw::xadd_pipelined_with(
                &raw.client,
                &raw.key,
                n,
                1_000,
                4,
                raw::minimal_entry_fields,
            )
            .await?;
            let cmds = CmdMeter::start(&raw.client).await;
            let meter = CpuMeter::start(&raw.client).await;
            let took = raw::drain(&raw.client, &raw.key, "rawmin", n, RAW_CMD_COUNT).await?;
            let rate = minimal.push(n, took, meter.stop(&raw.client).await);
            minimal_cmds.add(cmds.stop(&raw.client).await.as_ref(), n);
            line += &format!("; minimal entries COUNT {RAW_CMD_COUNT}: {rate:.0}/s");
            raw.clear().await?;
            if bus_rate > 0.0 && raw_best > 0.0 {
                paired.push(bus_rate / raw_best);
            }
        }
        progress(&line);
    }
    report.drain_ratio_paired = report.record("drain_ratio_paired", &paired);
    if bus.is_some() {
        report.drain_per_s = report.record_series("drain", &w2[0]);
        report.drain_strict_per_s = report.record_series("drain_strict", &w2[1]);
        report.drain_prefetch_per_s = report.record_series("drain_prefetch", &w2[2]);
        report.record_commands("drain", &w2_cmds);
    }
    if let Some(raw) = raw {
        for (count, s) in &raws {
            report.record_series(&format!("raw_drain_count{count}"), s);
        }
        report.raw_drain_per_s = report.best("raw_drain_count");
        report.record_commands(&format!("raw_drain_count{RAW_CMD_COUNT}"), &raw_cmds);
        for (reads, s) in &bounded {
            report.record_series(&format!("raw_bounded_{reads}x{}", c / reads), s);
        }
        report.raw_drain_bounded_per_s = report.best("raw_bounded_");
        report.raw_drain_minimal_per_s =
            report.record_series(&format!("raw_drain_minimal_count{RAW_CMD_COUNT}"), &minimal);
        report.record_commands(
            &format!("raw_drain_minimal_count{RAW_CMD_COUNT}"),
            &minimal_cmds,
        );
        raw.close().await?;
    }
    Ok(())
}
