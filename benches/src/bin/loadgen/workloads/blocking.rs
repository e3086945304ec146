//! W6: handlers that take 5 ms, awaited (`tokio::time::sleep`) against blocking their thread
//! (`std::thread::sleep`) in blocking mode (`SubscriberOptions::blocking(true)`).

use std::time::Duration;

use benches::BoxResult;
use bus_core::testing::delete_prefix;

use crate::harness::{backlog, drain_with_worker, progress, Run, Work};
use crate::report::Report;
use crate::stats::{Samples, Series};
use crate::Args;

/// How long each handler takes.
pub(crate) const HANDLER_TIME: Duration = Duration::from_millis(5);
/// Most events each drain handles: with 5 ms handlers and 32 slots the ceiling is 6 400/s, so
/// 20 000 take about 3 s.
pub(crate) const MAX_EVENTS: u64 = 20_000;

/// Events each drain of W6 handles for `--events n`.
pub(crate) fn events(n: u64) -> u64 {
    n.min(MAX_EVENTS)
}

/// W6: one worker drains a backlog with a 5 ms awaited handler (async mode, default options),
/// then another backlog with a handler blocking its thread 5 ms in blocking mode, alternating in
/// each repeat so both see the same machine conditions.
pub(crate) async fn phase_blocking(
    args: &Args,
    run: &mut Run,
    report: &mut Report,
) -> BoxResult<()> {
    let (n, k) = (events(args.events), args.repeat);
    let bus = run.bus("blocking").await?;
    let mut awaited = Series::default();
    let mut blocking = Series::default();
    let mut paired = Samples::default();
    for i in 0..k {
        backlog(&bus, n).await?;
        let work = Work::Await(HANDLER_TIME);
        let d =
            drain_with_worker(&bus, n, &["awaited"], None, work, args.concurrency, |o| o).await?;
        let a = awaited.push(n, d.took, d.cpu);
        delete_prefix(&bus).await?;
        backlog(&bus, n).await?;
        let work = Work::Block(HANDLER_TIME);
        let d = drain_with_worker(&bus, n, &["blocking"], None, work, args.concurrency, |o| {
            o.blocking(true)
        })
        .await?;
        let b = blocking.push(n, d.took, d.cpu);
        delete_prefix(&bus).await?;
        if a > 0.0 {
            paired.push(b / a);
        }
        progress(&format!(
            "W6 5 ms handlers {}/{k}: awaited {a:.0}/s; blocking mode {b:.0}/s",
            i + 1
        ));
    }
    report.awaited_handler_per_s = report.record_series("awaited_handler", &awaited);
    report.blocking_handler_per_s = report.record_series("blocking_handler", &blocking);
    report.record("blocking_ratio_paired", &paired);
    Ok(())
}
