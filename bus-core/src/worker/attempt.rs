//! One attempt: decide what an entry is (not for this group, undecodable, unknown type, or an
//! event to run), run its handler (timeout, panics caught), map the result to a typed
//! [`Outcome`], and settle it in Redis (ack, fenced retry, fenced dead-letter).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use fred::bytes::Bytes;
use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::blocking::{run_on_blocking_pool, Watched};
use super::fenced::Fenced;
use super::gate::Turn;
use super::group::Group;
use super::handlers::Dispatched;
use super::outcome::{bounded_error, Outcome, Reason, SkipReason};
use super::state::{Lane, Phase, Token};
use super::take;
use crate::envelope;
use crate::error::Action;
use crate::status::State;
use crate::subscriber::make_context;
use crate::UnknownTypes;

/// What an attempt holds while it runs: a concurrency slot and its turn at the solo gate. Never
/// read: dropping it frees both.
#[allow(dead_code)]
pub(crate) struct Slot {
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) turn: Turn,
}

/// One entry, taken for one attempt.
pub(crate) struct Delivery {
    pub(crate) lane: Lane,
    pub(crate) id: String,
    /// `None` when the entry was deleted while pending.
    pub(crate) fields: Option<Vec<(Bytes, Bytes)>>,
    /// Which attempt this is (attempts cut short by a crash beside other handlers not counted).
    pub(crate) attempt: u32,
    /// The entry's delivery count in Redis: fences this attempt's outcome.
    pub(crate) delivery: u32,
    /// The `Running` state in the held table.
    pub(crate) token: Token,
    /// Whether the entry has an attempt record (it went through the take script).
    pub(crate) has_record: bool,
    pub(crate) slot: Slot,
}

/// What the settling step needs to know about the event besides the outcome.
#[derive(Default)]
struct Meta {
    event_id: String,
    /// The handler's encoded return value, when the group keeps results.
    result: Option<Vec<u8>>,
    /// Why a result was not kept (it was over the group's limit).
    result_dropped: Option<String>,
    span: Option<tracing::Span>,
}

/// Runs and settles one attempt on handler task `task` (past the pool's tasks for an attempt run
/// on a task of its own); returns the slot for the caller to release.
pub(crate) async fn run_attempt(g: &Arc<Group>, d: Delivery, task: usize) -> Slot {
    let Delivery {
        lane,
        id,
        fields,
        attempt,
        delivery,
        token,
        has_record,
        slot,
    } = d;
    let started = Instant::now();
    let (outcome, meta) = attempt_outcome(g, &id, fields, attempt, task).await;
    if outcome == Outcome::Ack && !g.opts().get_track_status() {
        // The common case, kept free of allocations: acknowledge and let go.
        g.metrics.handled.increment(1);
        g.ack(lane, id, token, has_record).await;
        g.pace.attempt(started.elapsed(), true);
        return slot;
    }
    let ok = matches!(outcome, Outcome::Ack | Outcome::Skip(_));
    let span = meta.span.clone().unwrap_or_else(tracing::Span::none);
    let settled = Settle {
        lane,
        id: &id,
        token,
        attempt,
        delivery,
        has_record,
    };
    Box::pin(settled.apply(g, outcome, meta))
        .instrument(span)
        .await;
    g.pace.attempt(started.elapsed(), ok);
    slot
}

/// Decodes the entry, runs its handler and maps what happened to an [`Outcome`].
async fn attempt_outcome(
    g: &Arc<Group>,
    id: &str,
    fields: Option<Vec<(Bytes, Bytes)>>,
    attempt: u32,
    task: usize,
) -> (Outcome, Meta) {
    let mut meta = Meta::default();
    let Some(fields) = fields else {
        return (Outcome::Skip(SkipReason::Deleted), meta);
    };
    // A replayed dead letter is for one group only: checked before anything is decoded, so an
    // entry that failed at envelope level is not dead-lettered again by every other group.
    if envelope::addressed_to(&fields).is_some_and(|to| to != g.group().as_bytes()) {
        return (Outcome::Skip(SkipReason::OtherGroup), meta);
    }
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    let limit = g.opts().get_max_entry_bytes();
    if size > limit {
        return (
            Outcome::DeadLetter {
                reason: Reason::TooLarge,
                error: format!("entry of {size} bytes is over this group's limit of {limit} bytes"),
            },
            meta,
        );
    }
    let mut env = match envelope::decode(&fields) {
        Ok(env) => env,
        Err(e) => {
            let error = e.to_string();
            return (
                Outcome::DeadLetter {
                    reason: Reason::Decode,
                    error,
                },
                meta,
            );
        }
    };
    meta.event_id = env.event_id.clone();
    let Some(handler) = g.handlers.get(&env.event_type).cloned() else {
        if g.log_unknown_now(&env.event_type) {
            tracing::warn!(
                entry_id = id,
                event_type = %env.event_type,
                handled = ?g.handlers.types(),
                policy = ?g.opts().get_unknown_types(),
                "no handler of this group knows the event type"
            );
        }
        let outcome = match g.opts().get_unknown_types() {
            UnknownTypes::DeadLetter => Outcome::DeadLetter {
                reason: Reason::UnknownType,
                error: format!("no handler for event type {}", env.event_type),
            },
            _ => Outcome::Skip(SkipReason::UnknownType),
        };
        return (outcome, meta);
    };
    let span = tracing::info_span!(
        "handle",
        stream = g.stream(),
        group = g.group(),
        event_id = %env.event_id,
        entry_id = id,
        attempt
    );
    #[cfg(feature = "opentelemetry")]
    crate::otel::continue_trace(&span, &env.headers);
    meta.span = Some(span.clone());
    let opts = g.opts();
    let ctx = make_context(
        std::mem::take(&mut env.event_id),
        std::mem::take(&mut env.event_type),
        id.to_owned(),
        &g.names,
        attempt,
        env.published_at_ms,
        std::mem::take(&mut env.headers),
        opts.get_track_status(),
    );
    if opts.get_track_status() {
        Box::pin(g.record_status(&meta.event_id, State::Running, attempt, None, None)).await;
    }
    g.metrics
        .latency_seconds
        .record(crate::time::now_ms().saturating_sub(env.published_at_ms) as f64 / 1000.0);
    let started = Instant::now();
    let limit = opts.get_handler_timeout();
    let ran = if opts.get_blocking() {
        within(limit, run_on_blocking_pool(handler, env, ctx, span)).await
    } else {
        let run = AssertUnwindSafe(handler.dispatch(env, ctx))
            .catch_unwind()
            .instrument(span);
        if g.blocking.enabled() {
            within(limit, Watched::new(run, g, task)).await
        } else {
            within(limit, run).await
        }
    };
    g.metrics
        .handle_seconds
        .record(started.elapsed().as_secs_f64());
    let max = opts.get_max_attempts();
    let outcome = match ran {
        None => {
            g.metrics.timed_out.increment(1);
            g.metrics.failed.increment(1);
            let limit = opts.get_handler_timeout().unwrap_or_default();
            Outcome::failed(
                format!("timed out after {limit:?}; the handler was abandoned"),
                None,
                true,
                attempt,
                max,
            )
        }
        Some(Ok(Dispatched::Done(Ok(output)))) => {
            match output.result {
                Some(r) if r.len() > opts.get_max_result_bytes() => {
                    let why = format!(
                        "result of {} bytes is over this group's limit of {} bytes{}",
                        r.len(),
                        opts.get_max_result_bytes(),
                        crate::status::RESULT_NOT_STORED
                    );
                    tracing::warn!(entry_id = %id, "{why}");
                    meta.result_dropped = Some(why);
                }
                r => meta.result = r,
            }
            Outcome::Ack
        }
        Some(Ok(Dispatched::Undecodable(error))) => Outcome::DeadLetter {
            reason: Reason::Decode,
            error: bounded_error(error),
        },
        Some(Ok(Dispatched::Done(Err(e)))) => match e.action() {
            Action::Reject => Outcome::DeadLetter {
                reason: Reason::Rejected,
                error: bounded_error(e.to_string()),
            },
            action => {
                g.metrics.failed.increment(1);
                let delay = match action {
                    Action::RetryAfter(d) => Some(d),
                    _ => None,
                };
                Outcome::failed(e.to_string(), delay, false, attempt, max)
            }
        },
        Some(Err(panic)) => {
            g.metrics.failed.increment(1);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            Outcome::failed(format!("panic: {msg}"), None, false, attempt, max)
        }
    };
    (outcome, meta)
}

/// Runs `f` to its end, or until `limit` passes (`None`).
async fn within<F: std::future::Future>(
    limit: Option<std::time::Duration>,
    f: F,
) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, f).await.ok(),
        None => Some(f.await),
    }
}

/// The entry an outcome is settled for.
struct Settle<'a> {
    lane: Lane,
    id: &'a str,
    token: Token,
    attempt: u32,
    delivery: u32,
    has_record: bool,
}

impl Settle<'_> {
    async fn apply(self, g: &Arc<Group>, outcome: Outcome, meta: Meta) {
        let Settle {
            lane,
            id,
            token,
            attempt,
            delivery,
            has_record,
        } = self;
        match outcome {
            Outcome::Ack => {
                g.metrics.handled.increment(1);
                g.record_status(
                    &meta.event_id,
                    State::Succeeded,
                    attempt,
                    meta.result_dropped.as_deref(),
                    meta.result.as_deref(),
                )
                .await;
                g.ack(lane, id.to_owned(), token, has_record).await;
            }
            Outcome::Skip(reason) => {
                match reason {
                    SkipReason::Deleted => {
                        g.metrics.deleted_pending.increment(1);
                        tracing::warn!(entry_id = id, "entry was deleted while pending (trimmed or XDEL); acknowledging it away");
                    }
                    SkipReason::UnknownType => g.metrics.skipped("unknown_type"),
                    SkipReason::OtherGroup => {
                        tracing::debug!(entry_id = id, "replayed for another group; skipped")
                    }
                }
                g.ack(lane, id.to_owned(), token, has_record).await;
            }
            Outcome::Retry {
                delay,
                error,
                timed_out,
            } => {
                let delay = delay.unwrap_or_else(|| g.backoff(attempt));
                match g
                    .schedule_retry(lane, id, delivery, attempt, delay, &error)
                    .await
                {
                    Ok(Fenced::Done) => {
                        g.metrics.retried.increment(1);
                        tracing::warn!(
                            entry_id = id,
                            attempt,
                            ?delay,
                            error,
                            timed_out,
                            "attempt failed; retrying after backoff"
                        );
                        g.record_status(&meta.event_id, State::Failed, attempt, Some(&error), None)
                            .await;
                        // Waits here, lease renewed, however long the delay; if this process
                        // dies, another one's scanner finds the record and honours the due time.
                        if let Some(waiting) = g.held.advance(lane, id, token, Phase::Waiting) {
                            take::schedule(g, lane, id, waiting, delay, false);
                        }
                    }
                    Ok(Fenced::Deleted) => {
                        g.metrics.deleted_pending.increment(1);
                        tracing::warn!(
                            entry_id = id,
                            "entry was deleted while pending; acknowledged away"
                        );
                        g.held.remove(lane, id, token);
                    }
                    Ok(Fenced::NotOurs) => {
                        tracing::warn!(
                            entry_id = id,
                            "retry not scheduled: another attempt owns this entry now"
                        );
                        g.held.remove(lane, id, token);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, entry_id = id, "cannot schedule the retry; the entry will be reclaimed after the visibility timeout");
                        g.held.remove(lane, id, token);
                    }
                }
            }
            Outcome::DeadLetter { reason, error } => {
                match g
                    .dead_letter(lane, id, Some(delivery), attempt, reason, &error)
                    .await
                {
                    Ok(Fenced::Done) => {
                        g.metrics.dead_lettered(reason.as_str());
                        tracing::warn!(
                            entry_id = id,
                            reason = reason.as_str(),
                            error,
                            attempt,
                            "moved to the dead-letter stream"
                        );
                        g.record_status(&meta.event_id, State::Dead, attempt, Some(&error), None)
                            .await;
                    }
                    Ok(Fenced::Deleted) => {
                        g.metrics.deleted_pending.increment(1);
                        tracing::warn!(entry_id = id, "entry was deleted while pending; acknowledged away, nothing dead-lettered");
                    }
                    Ok(Fenced::NotOurs) => {
                        tracing::warn!(
                            entry_id = id,
                            "not dead-lettered: another attempt owns this entry now"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, entry_id = id, "dead-letter move failed; the entry stays pending and will be retried");
                    }
                }
                g.held.remove(lane, id, token);
            }
        }
    }
}
