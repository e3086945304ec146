//! Taking a held entry for its next attempt: the path of retries, reclaimed entries and this
//! consumer's own pending entries (everything but fresh reads).
//!
//! Each held `Claimed` or `Waiting` entry has exactly one task here that owns it until it runs,
//! is settled, or is lost: it waits until the entry is due, gets a slot and a turn at the solo
//! gate, and calls the take script, which checks the attempt limit, the due time and whether the
//! entry must run alone. A failure to reach Redis leaves the entry held (its lease renewed) and is
//! tried again; a take whose reply was lost is re-sent with the same attempt token and finds the
//! attempt it started.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::attempt::{Delivery, Slot};
use super::fenced::Take;
use super::gate::Reservation;
use super::group::{sleep_unless_stopped, Group};
use super::pool::Pool;
use super::state::{Lane, Phase, Token};
use crate::status::State;

/// Starts the task that takes a held entry after `delay`. `fresh`: the caller knows the entry's
/// last delivery never started (a lost read), so it is neither a suspect nor charged.
pub(crate) fn schedule(
    g: &Arc<Group>,
    lane: Lane,
    id: &str,
    token: Token,
    delay: Duration,
    fresh: bool,
) {
    let group = g.clone();
    let owned_id = id.to_owned();
    let task = tokio::spawn(
        async move { take_when_due(&group, lane, owned_id, token, delay, fresh).await }
            .in_current_span(),
    );
    g.held.attach(lane, id, token, task.abort_handle());
}

async fn take_when_due(
    g: &Arc<Group>,
    lane: Lane,
    id: String,
    token: Token,
    mut delay: Duration,
    fresh: bool,
) {
    let mut stop = g.stop.clone();
    // One token per attempt this task starts: a re-sent take carries the same one.
    let attempt_token = uuid::Uuid::new_v4().simple().to_string();
    // Set once the take script said the entry must run alone: this process's suspect slot.
    let mut reservation: Option<Reservation> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if !delay.is_zero() && !sleep_unless_stopped(&mut stop, delay).await {
            return;
        }
        delay = Duration::ZERO;
        let permit = tokio::select! {
            biased;
            p = g.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let turn = if let Some(r) = reservation.take() {
            // Waits for every running attempt in the process to finish (new attempts wait
            // meanwhile), for as long as an attempt may run: the handler timeout, else the
            // visibility timeout. Past that a handler may be hung: give way and try again later.
            let wait = g
                .opts()
                .get_handler_timeout()
                .map_or(g.vt(), |t| t + Duration::from_millis(100))
                .max(g.vt());
            match g.gate.alone(r, wait).await {
                Ok(turn) => turn,
                Err(r) => {
                    tracing::info!(entry_id = %id, "a suspect waits to run alone: other handlers are still running");
                    reservation = Some(r);
                    delay = g.vt() / 2;
                    continue;
                }
            }
        } else {
            tokio::select! {
                biased;
                t = g.gate.shared() => t,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let solo = turn.is_alone();
        if g.stopped() {
            return;
        }
        match g.take(lane, &id, &attempt_token, solo, fresh).await {
            Ok(Take::Run {
                delivery,
                attempt,
                fields,
            }) => {
                let running = Phase::Running { attempt, delivery };
                let Some(token) = g.held.advance(lane, &id, token, running) else {
                    // Lost meanwhile: not renewed any more, reclaimed after the visibility timeout.
                    return;
                };
                if solo {
                    tracing::info!(entry_id = %id, attempt, "running a suspect alone");
                } else {
                    tracing::debug!(entry_id = %id, attempt, "running a new attempt");
                }
                let alone = turn.is_alone();
                let d = Delivery {
                    lane,
                    id,
                    fields: Some(fields),
                    attempt,
                    delivery,
                    token,
                    has_record: true,
                    slot: Slot { permit, turn },
                };
                if alone {
                    Pool::run_alone(g, d);
                } else {
                    Pool::run(g, d);
                }
                return;
            }
            Ok(Take::NotDue(left)) => delay = left,
            Ok(Take::NeedsSolo) => match g.gate.reserve() {
                Some(r) => reservation = Some(r),
                None => {
                    // This process holds a suspect already: leave this one to another worker
                    // (released for immediate reclaim, its record kept).
                    drop((permit, turn));
                    let _ = g.release(lane, &[(id.clone(), String::new())]).await;
                    g.held.remove(lane, &id, token);
                    return;
                }
            },
            Ok(Take::DeadLettered { attempts, event_id }) => {
                g.metrics.dead_lettered("max_attempts");
                tracing::warn!(
                    entry_id = %id,
                    attempts,
                    "attempts used up; moved to the dead-letter stream"
                );
                g.record_status(
                    &event_id,
                    State::Dead,
                    attempts,
                    Some("attempts used up"),
                    None,
                )
                .await;
                g.held.remove(lane, &id, token);
                return;
            }
            Ok(Take::Deleted) => {
                g.metrics.deleted_pending.increment(1);
                tracing::warn!(entry_id = %id, "entry was deleted while pending (trimmed or XDEL); acknowledged away");
                g.held.remove(lane, &id, token);
                return;
            }
            Ok(Take::NotOurs) => {
                tracing::debug!(entry_id = %id, "entry is no longer ours");
                g.held.remove(lane, &id, token);
                return;
            }
            Err(e) => {
                // Still held and renewed (when Redis answers again): try again. If the lease is
                // lost meanwhile, the heartbeat ends this task.
                tracing::warn!(error = %e, entry_id = %id, "cannot take the entry for its next attempt; trying again");
                delay = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
