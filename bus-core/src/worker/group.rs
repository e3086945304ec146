//! One consumer group in one worker: its keys, its handlers, and the components its tasks share
//! (held-entry table, slots, acks, handler pool). The tasks themselves live in `read`, `take`,
//! `attempt`, `reclaim` and `lease`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::sync::{watch, Semaphore};

use super::acker::{AckSender, Unacked};
use super::blocking::BlockingWatch;
use super::gate::SoloGate;
use super::handlers::HandlerSet;
use super::keeper::Keeper;
use super::pace::Pace;
use super::pool::Pool;
use super::state::{HeldTable, Lane, Phase, Token};
use super::WorkerSettings;
use crate::conn::Conn;
use crate::metrics::SubscriberMetrics;
use crate::names::{Priority, StreamKeys};
use crate::status::{self, State, StatusWrite};
use crate::subscriber::{ContextNames, SubscriberOptions};

/// The keys of one priority lane.
pub(crate) struct LaneKeys {
    /// The lane's stream.
    pub(crate) stream: String,
    /// The group's attempt records for entries of this lane.
    pub(crate) records: String,
}

/// The Redis keys a group works on.
pub(crate) struct GroupKeys {
    /// Per lane, highest priority first.
    pub(crate) lanes: Vec<LaneKeys>,
    pub(crate) dead_letters: String,
    /// The stream's whole key set (for per-entry keys such as settled markers).
    pub(crate) stream: StreamKeys,
}

impl GroupKeys {
    pub(crate) fn new(conn: &Conn, stream: &str, group: &str) -> Self {
        let keys = conn.keys(stream);
        GroupKeys {
            lanes: Priority::ALL
                .iter()
                .map(|p| LaneKeys {
                    stream: keys.lane(*p),
                    records: keys.lane_retries(*p, group),
                })
                .collect(),
            dead_letters: keys.dead_letter(group),
            stream: keys,
        }
    }

    pub(crate) fn lane_of(&self, stream_key: &str) -> Option<Lane> {
        self.lanes.iter().position(|l| l.stream == stream_key)
    }
}

/// Everything the tasks of one group share.
pub(crate) struct Group {
    pub(crate) handlers: HandlerSet,
    pub(crate) keys: GroupKeys,
    pub(crate) consumer: Arc<str>,
    /// Stream, group and consumer names every delivery's context shares.
    pub(crate) names: ContextNames,
    pub(crate) conn: Conn,
    pub(crate) client: Client,
    pub(crate) settings: WorkerSettings,
    pub(crate) held: Arc<HeldTable>,
    /// One permit per concurrency slot.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) gate: SoloGate,
    /// Per lane; closed at shutdown once handlers are done.
    pub(crate) acks: Vec<AckSender>,
    /// Acknowledgements queued or in flight, all lanes.
    pub(crate) unacked: Arc<Unacked>,
    pub(crate) pool: Pool,
    /// Times handler polls, to notice handlers that block their thread.
    pub(crate) blocking: BlockingWatch,
    /// The thread where leases are renewed, whatever the handlers do.
    pub(crate) keeper: Keeper,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) metrics: SubscriberMetrics,
    /// Measured slot and read times, for the adaptive read-ahead.
    pub(crate) pace: Pace,
    /// When an unknown event type was last logged, per type (the log is rate-limited).
    unknown_logged: Mutex<HashMap<String, Instant>>,
}

impl Group {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        handlers: HandlerSet,
        keys: GroupKeys,
        consumer: Arc<str>,
        conn: &Conn,
        settings: WorkerSettings,
        gate: SoloGate,
        held: Arc<HeldTable>,
        acks: Vec<AckSender>,
        unacked: Arc<Unacked>,
        keeper: Keeper,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let opts = handlers.options();
        let names = ContextNames::new(handlers.stream(), opts.get_group(), &consumer);
        let metrics = SubscriberMetrics::new(handlers.stream(), opts.get_group());
        Group {
            slots: Arc::new(Semaphore::new(opts.get_concurrency())),
            pool: Pool::new(opts.get_concurrency()),
            // A blocking-mode handler runs on the blocking pool: nothing to watch.
            blocking: BlockingWatch::new(
                opts.get_concurrency(),
                settings.blocking_threshold.filter(|_| !opts.get_blocking()),
            ),
            keeper,
            held,
            names,
            metrics,
            consumer,
            conn: conn.clone(),
            client: conn.client.clone(),
            settings,
            gate,
            acks,
            unacked,
            stop,
            keys,
            handlers,
            pace: Pace::default(),
            unknown_logged: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn opts(&self) -> &SubscriberOptions {
        self.handlers.options()
    }

    pub(crate) fn group(&self) -> &str {
        self.opts().get_group()
    }

    pub(crate) fn stream(&self) -> &'static str {
        self.handlers.stream()
    }

    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) fn vt(&self) -> Duration {
        self.opts().get_visibility_timeout()
    }

    pub(crate) fn lanes(&self) -> std::ops::Range<Lane> {
        0..self.keys.lanes.len()
    }

    pub(crate) fn lane(&self, lane: Lane) -> &LaneKeys {
        &self.keys.lanes[lane]
    }

    /// Room for more held entries (see [`SubscriberOptions::max_held`]); entries that only wait
    /// for their ack do not count.
    pub(crate) fn room(&self) -> usize {
        let held = self.held.len().saturating_sub(self.unacked.count());
        self.opts().held_bound(self.ahead()).saturating_sub(held)
    }

    /// How many entries to read beyond the free slots: the fixed
    /// [`SubscriberOptions::prefetch`], or what the measured pace allows.
    pub(crate) fn ahead(&self) -> usize {
        let opts = self.opts();
        opts.get_prefetch()
            .unwrap_or_else(|| self.pace.ahead(opts.get_concurrency()))
    }

    /// Settles a handled entry: moves it from state `token` to `Acking` and queues its
    /// acknowledgement (the acker lets go of it once sent). An entry no longer in that state lost
    /// its lease, and another worker may have written an attempt record meanwhile; this ack
    /// settles the entry, so the record goes too.
    pub(crate) async fn ack(&self, lane: Lane, id: String, token: Token, has_record: bool) {
        let acking = self.held.advance(lane, &id, token, Phase::Acking);
        let Some(sender) = self.acks.get(lane) else {
            return;
        };
        // Not queued (the acker is gone: shutdown): the entry stays held, and the release at
        // shutdown makes it reclaimable at once.
        let _ = sender.ack(id, has_record || acking.is_none(), acking).await;
    }

    /// Flushes and ends the ackers.
    pub(crate) async fn close_acks(&self) {
        for sender in &self.acks {
            sender.close().await;
        }
    }

    /// Backoff before the attempt after `attempt`: exponential from `backoff_min`, capped at
    /// `backoff_max`, with "equal jitter" (a random point in the upper half).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let (lo, hi) = (self.opts().get_backoff_min(), self.opts().get_backoff_max());
        let exp = attempt.saturating_sub(1).min(31);
        let base = lo.saturating_mul(1u32 << exp).min(hi);
        let r = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        base.mul_f64(0.5 + 0.5 * r).clamp(lo.min(hi), hi)
    }

    /// Whether to log an unknown event type now (at most once a minute per type).
    pub(crate) fn log_unknown_now(&self, event_type: &str) -> bool {
        let Ok(mut logged) = self.unknown_logged.lock() else {
            return false;
        };
        let now = Instant::now();
        match logged.get(event_type) {
            Some(at) if now.duration_since(*at) < Duration::from_secs(60) => false,
            _ => {
                if logged.len() > 1000 {
                    logged.clear();
                }
                logged.insert(event_type.to_owned(), now);
                true
            }
        }
    }

    /// Writes this group's status for an event, if the group tracks status. A failed write is
    /// logged and does not change how the event is handled.
    pub(crate) async fn record_status(
        &self,
        event_id: &str,
        state: State,
        attempts: u32,
        error: Option<&str>,
        result: Option<&[u8]>,
    ) {
        if !self.opts().get_track_status() || event_id.is_empty() {
            return;
        }
        let w = StatusWrite {
            state,
            attempts,
            error,
            result,
        };
        if let Err(e) = status::write(
            &self.conn,
            self.stream(),
            self.group(),
            event_id,
            w,
            self.opts().get_status_ttl(),
        )
        .await
        {
            tracing::warn!(error = %e, event_id, "cannot record the event's status");
        }
    }
}

/// Sleeps for `d`, or less when the stop flag is set meanwhile. False when stopped.
pub(crate) async fn sleep_unless_stopped(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    let slept = tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    slept && !*stop.borrow()
}
