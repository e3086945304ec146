//! W5: a drain in which every tenth event fails its first attempt.

use std::time::Duration;

use benches::BoxResult;
use bus_core::testing::delete_prefix;

use crate::commandstats::Tally;
use crate::harness::{backlog, drain_with_worker, progress, Run, Work};
use crate::report::Report;
use crate::stats::{Samples, Series};
use crate::Args;

/// W5: as W2, with every tenth event failing its first attempt (backoff 10–50 ms).
pub(crate) async fn phase_retry(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = run.bus("retry").await?;
    let mut s = Series::default();
    let mut secs = Samples::default();
    let mut deliveries = 0;
    let mut cmds = Tally::default();
    for i in 0..k {
        backlog(&bus, n).await?;
        let d = drain_with_worker(
            &bus,
            n,
            &["retry"],
            Some(10),
            Work::Nothing,
            args.concurrency,
            |o| {
                o.backoff_min(Duration::from_millis(10))
                    .backoff_max(Duration::from_millis(50))
            },
        )
        .await?;
        deliveries = d.deliveries;
        let rate = s.push(d.deliveries, d.took, d.cpu);
        cmds.add(d.cmds.as_ref(), d.deliveries);
        secs.push(d.took.as_secs_f64());
        progress(&format!(
            "W5 retries {}/{k}: {} deliveries in {:.2} s = {rate:.0}/s",
            i + 1,
            d.deliveries,
            d.took.as_secs_f64(),
        ));
        delete_prefix(&bus).await?;
    }
    report.retry_drain_per_s = report.record_series("retry_drain", &s);
    report.retry_total_s = report.record("retry_total_s", &secs);
    report.retry_deliveries = Some(deliveries);
    report.record_commands("retry", &cmds);
    Ok(())
}
