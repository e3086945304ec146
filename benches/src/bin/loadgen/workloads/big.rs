//! `--big`: a 1 000 000-event backlog and the RSS peak of draining it.

use benches::{peak_rss_mib, rss_mib, BoxResult};
use bus_core::testing::delete_prefix;

use crate::harness::{backlog, drain_with_worker, progress, reset_peak_rss, Run, Work};
use crate::report::Report;
use crate::stats::per_s;
use crate::Args;

/// `--big`: a 1 000 000-event backlog drained by one worker; the RSS peak of that phase alone.
pub(crate) async fn phase_big(args: &Args, run: &mut Run, report: &mut Report) -> BoxResult<()> {
    let big = 1_000_000;
    let bus = run.bus("big").await?;
    progress("big: publishing a 1 000 000-event backlog");
    backlog(&bus, big).await?;
    let reset = reset_peak_rss();
    let before = rss_mib();
    let d = drain_with_worker(
        &bus,
        big,
        &["big"],
        None,
        Work::Nothing,
        args.concurrency,
        |o| o,
    )
    .await?;
    report.big_events = Some(big);
    report.big_drain_per_s = Some(per_s(big, d.took));
    report.big_phase_peak_rss_mib = if reset { peak_rss_mib() } else { None };
    progress(&format!(
        "big: drained {big} in {:.1} s ({:.0}/s); RSS before {:?} MiB, peak during {:?} MiB",
        d.took.as_secs_f64(),
        per_s(big, d.took),
        before,
        report.big_phase_peak_rss_mib
    ));
    delete_prefix(&bus).await?;
    Ok(())
}
