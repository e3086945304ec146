//! Leases: the heartbeat that renews every held entry well inside the visibility timeout, and the
//! release of what is left at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::fenced::{abandoned_record, released_record, SCRIPT_CHUNK};
use super::group::Group;
use super::state::Phase;

/// Renews every held entry each third of the visibility timeout; entries another consumer took
/// over (or nobody has pending any more) are dropped from the table, and entries deleted from
/// the stream while pending are counted and dropped. A running handler of a lost entry goes on;
/// its outcome is fenced in Redis. Runs on the lease keeper's thread, over its connection (see
/// [`super::keeper`]).
pub(crate) async fn heartbeat_loop(g: Arc<Group>, mut stop: watch::Receiver<bool>) {
    let interval = (g.vt() / 3).max(Duration::from_millis(30));
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        for lane in g.lanes() {
            let ids = g.held.ids(lane);
            for chunk in ids.chunks(SCRIPT_CHUNK) {
                match g.renew(g.keeper.client(), lane, chunk).await {
                    Ok((lost, deleted)) => {
                        tracing::debug!(renewed = chunk.len(), lost = lost.len(), "renewed leases");
                        for id in lost {
                            if g.held.forget(lane, &id).is_some() {
                                g.metrics.lease_lost.increment(1);
                                tracing::warn!(entry_id = %id, "lease lost: another worker took this entry over, or it was settled elsewhere");
                            }
                        }
                        for id in deleted {
                            if g.held.forget(lane, &id).is_some() {
                                g.metrics.deleted_pending.increment(1);
                                tracing::warn!(entry_id = %id, "entry was deleted while pending (trimmed or XDEL); dropped");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
            }
        }
    }
}

/// Makes every entry still held reclaimable at once, recording how each was left: not started
/// (no attempt), abandoned while running (a failed attempt), or as it was (claimed, waiting).
pub(crate) async fn release_all(g: &Group) {
    let mut released = 0;
    for lane in g.lanes() {
        let entries: Vec<(String, String)> = g
            .held
            .phases(lane)
            .into_iter()
            .map(|(id, phase)| {
                let record = match phase {
                    Phase::Queued => released_record(),
                    Phase::Running { attempt, .. } => abandoned_record(attempt),
                    // Acking: the handler succeeded but its ack was given up; run again, uncharged.
                    Phase::Claimed | Phase::Waiting | Phase::Acking => String::new(),
                };
                (id, record)
            })
            .collect();
        for chunk in entries.chunks(SCRIPT_CHUNK) {
            match g.release(lane, chunk).await {
                Ok(n) => released += n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release entries; they will be reclaimed after the visibility timeout")
                }
            }
        }
    }
    if released > 0 {
        tracing::info!(
            released,
            "released unfinished entries for immediate reclaim"
        );
    }
}
