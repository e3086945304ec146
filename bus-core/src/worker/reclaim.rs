//! The pending-entry scanner: every half visibility timeout, claims entries idle for longer than
//! the visibility timeout (their worker died or stalled) with `XAUTOCLAIM … JUSTID`, which counts
//! no delivery, and hands each one to a take task. It claims no more than it has free slots and
//! room for, skips a round while Redis does not answer and the first round after (so lease
//! renewals queued during a stall land first), and reaps idle consumers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::types::Value;

use super::group::{sleep_unless_stopped, Group};
use super::state::{Lane, Phase};
use super::take;
use crate::error::Result;
use crate::redis;

/// Most entries claimed by one XAUTOCLAIM call.
const MAX_CLAIM: usize = 100;

pub(crate) async fn scan_loop(g: Arc<Group>) {
    let mut stop = g.stop.clone();
    let interval = (g.vt() / 2).max(Duration::from_millis(50));
    let mut healthy = true;
    let mut first = true;
    let mut last_reap = Instant::now();
    loop {
        if !first {
            // A suspect that finished here makes room for the next one at once: suspects left
            // to other workers wait, released, for whichever scanner comes first.
            tokio::select! {
                _ = sleep_unless_stopped(&mut stop, interval) => {}
                () = g.gate.suspect_freed() => {}
            }
        }
        if g.stopped() {
            return;
        }
        if !redis::answers(&g.client, Duration::from_millis(500).min(interval)).await {
            if healthy {
                tracing::warn!("Redis is not answering; pausing reclaim");
            }
            healthy = false;
            first = false;
            continue;
        }
        if !healthy {
            tracing::info!("Redis answers again; reclaim resumes next round");
            healthy = true;
            continue;
        }
        first = false;
        for lane in g.lanes() {
            if let Err(e) = reclaim(&g, lane).await {
                if !e.is_nogroup() {
                    tracing::warn!(error = %e, "reclaim scan failed");
                }
            }
        }
        if let Some(after) = g.settings.reap_after {
            if last_reap.elapsed() >= (after / 4).max(interval) {
                last_reap = Instant::now();
                for lane in g.lanes() {
                    reap_consumers(&g, lane, after).await;
                }
            }
        }
    }
}

async fn reclaim(g: &Arc<Group>, lane: Lane) -> Result<()> {
    let mut budget = g.slots.available_permits().min(g.room());
    if budget == 0 {
        return Ok(());
    }
    let key = g.lane(lane).stream.as_str();
    let mut cursor = "0-0".to_owned();
    let mut claimed = 0u64;
    loop {
        let count = budget.min(MAX_CLAIM);
        let page = redis::autoclaim_page(
            &g.client,
            key,
            g.group(),
            &g.consumer,
            g.vt(),
            &cursor,
            count,
        )
        .await?;
        let Some((next, ids, deleted)) = page else {
            tracing::error!("unexpected XAUTOCLAIM reply");
            break;
        };
        if !deleted.is_empty() {
            // Pending entries whose data is gone (trimmed or XDEL): the server already dropped
            // them from the pending list.
            g.metrics.deleted_pending.increment(deleted.len() as u64);
            tracing::warn!(count = deleted.len(), ids = ?deleted, "pending entries were deleted from the stream before being handled; data was lost upstream");
            redis::forget_fields(&g.client, &g.lane(lane).records, deleted).await;
        }
        budget = budget.saturating_sub(ids.len());
        for id in ids {
            // Held already (e.g. our own entry waiting for its retry): its task goes on.
            if let Some(token) = g.held.insert(lane, &id, Phase::Claimed) {
                claimed += 1;
                take::schedule(g, lane, &id, token, Duration::ZERO, false);
            }
        }
        if next == "0-0" || budget == 0 {
            break;
        }
        cursor = next;
    }
    if claimed > 0 {
        g.metrics.reclaimed.increment(claimed);
        tracing::info!(
            count = claimed,
            "reclaimed entries past the visibility timeout"
        );
    }
    Ok(())
}

/// Deletes consumers of this group that have been idle for `after` and own nothing. A consumer
/// that still owns entries is never deleted: the scanner reclaims its entries first.
async fn reap_consumers(g: &Group, lane: Lane, after: Duration) {
    let Ok(consumers) = redis::consumers_of(&g.client, &g.lane(lane).stream, g.group()).await
    else {
        return;
    };
    for c in consumers {
        if c.name.is_empty()
            || c.name == *g.consumer
            || c.pending > 0
            || c.idle_ms < after.as_millis() as u64
        {
            continue;
        }
        delete_consumer_if_idle(g, lane, &c.name, after.as_millis() as u64).await;
    }
}

/// Removes a consumer from the group if it owns nothing and has been idle `min_idle_ms` (0: any).
pub(crate) async fn delete_consumer_if_idle(g: &Group, lane: Lane, name: &str, min_idle_ms: u64) {
    let r = redis::eval(
        redis::delete_idle_consumer_script(),
        &g.client,
        vec![g.lane(lane).stream.clone()],
        vec![
            Value::from(g.group()),
            Value::from(name),
            Value::from(min_idle_ms as i64),
        ],
    )
    .await;
    match r {
        Ok(Value::Integer(1)) => tracing::info!(consumer = name, "removed consumer from its group"),
        Ok(_) => tracing::debug!(
            consumer = name,
            "consumer still owns pending entries (or is active); kept"
        ),
        Err(e) => tracing::warn!(error = %e, consumer = name, "cannot remove consumer"),
    }
}
