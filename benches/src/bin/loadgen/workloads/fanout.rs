//! W4: fan-out to three groups.

use benches::BoxResult;
use bus_core::testing::delete_prefix;

use crate::harness::{backlog, drain_with_worker, progress, Run, Work};
use crate::report::Report;
use crate::stats::Series;
use crate::Args;

/// W4: three groups drain the same backlog in one worker.
pub(crate) async fn phase_fanout(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let (n, k) = (args.events, args.repeat);
    let bus = run.bus("fanout").await?;
    let mut s = Series::default();
    for i in 0..k {
        backlog(&bus, n).await?;
        let d = drain_with_worker(
            &bus,
            n,
            &["fan1", "fan2", "fan3"],
            None,
            Work::Nothing,
            args.concurrency,
            |o| o,
        )
        .await?;
        let rate = s.push(3 * n, d.took, d.cpu);
        progress(&format!("W4 fan-out {}/{k}: {rate:.0} deliveries/s", i + 1));
        delete_prefix(&bus).await?;
    }
    report.fanout_deliveries_per_s = report.record_series("fanout_deliveries", &s);
    Ok(())
}
