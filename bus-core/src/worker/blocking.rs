//! Handlers that block their thread: the blocking mode, which runs a handler on Tokio's blocking
//! pool, and the watch that notices async handlers holding a runtime thread without yielding.
//!
//! The watch times every poll of a handler's future. Each handler task has a probe holding when
//! its current poll began; a poll longer than the threshold is reported when it returns, and the
//! lease keeper's thread reports polls still running past it (a handler blocked for good never
//! returns to be timed). Each stretch is reported once: counted in
//! `streambus_handler_blocking_total`, logged at `warn` at most once a minute per group.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tracing::Instrument;

use super::group::Group;
use super::handlers::{Dispatched, DynHandler};
use crate::envelope::Envelope;
use crate::subscriber::Context;

/// What running a handler gave: its result, or the payload of its panic.
pub(crate) type Ran = Result<Dispatched, Box<dyn std::any::Any + Send>>;

/// Runs a handler on the blocking pool: the thread drives the handler's future to its end, so
/// its blocking calls hold that thread only. Panics are caught there and returned.
///
/// Dropping the returned future (the handler timeout passed, or shutdown gave up on it) drops the
/// handler's future on its thread at its next `.await`, so a handler hung in an `.await` frees
/// its thread; one stuck in a blocking call frees it when the call returns.
pub(crate) async fn run_on_blocking_pool(
    handler: Arc<dyn DynHandler>,
    envelope: Envelope,
    ctx: Context,
    span: tracing::Span,
) -> Ran {
    let runtime = tokio::runtime::Handle::current();
    let (_abandon_on_drop, abandoned) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::task::spawn_blocking(move || {
        let run =
            AssertUnwindSafe(async move { handler.dispatch(envelope, ctx).await }.instrument(span))
                .catch_unwind();
        runtime.block_on(async move {
            tokio::select! {
                ran = run => ran,
                _ = abandoned => Err(Box::new("abandoned") as Box<dyn std::any::Any + Send>),
            }
        })
    });
    match task.await {
        Ok(ran) => ran,
        Err(e) if e.is_panic() => Err(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(Box::new(
            "the blocking pool shut down before the handler ran",
        )),
    }
}

/// When the process first timed a poll: probes hold microseconds since then.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`], never 0 (0 marks "not in a poll").
fn now_us() -> u64 {
    (epoch().elapsed().as_micros() as u64).saturating_add(1)
}

/// One handler task's probe.
#[derive(Default)]
pub(crate) struct PollProbe {
    /// When the running poll began; 0 when no poll runs.
    began: AtomicU64,
    /// The `began` of the last stretch reported, so each is reported once.
    reported: AtomicU64,
}

/// The probes of one group's handler tasks, and the report's rate limit.
pub(crate) struct BlockingWatch {
    /// One per handler task, and one more for attempts run on a task of their own.
    probes: Box<[PollProbe]>,
    threshold_us: u64,
    last_logged: Mutex<Option<Instant>>,
}

impl BlockingWatch {
    /// Probes for `tasks` handler tasks; `threshold` `None` turns the watch off.
    pub(crate) fn new(tasks: usize, threshold: Option<Duration>) -> Self {
        BlockingWatch {
            probes: (0..=tasks).map(|_| PollProbe::default()).collect(),
            threshold_us: threshold.map_or(0, |t| t.as_micros().max(1) as u64),
            last_logged: Mutex::new(None),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.threshold_us > 0
    }

    /// The probe of handler task `task` (past the end: the one for attempts run alone).
    pub(crate) fn probe(&self, task: usize) -> usize {
        task.min(self.probes.len() - 1)
    }

    /// Reports every poll that has been running past the threshold (from the keeper's thread).
    pub(crate) fn check(&self, g: &Group) {
        if !self.enabled() {
            return;
        }
        let now = now_us();
        for probe in self.probes.iter() {
            let began = probe.began.load(Ordering::Acquire);
            if began != 0 && now.saturating_sub(began) > self.threshold_us {
                self.report(g, probe, began, now - began, true);
            }
        }
    }

    fn report(&self, g: &Group, probe: &PollProbe, began: u64, held_us: u64, ongoing: bool) {
        if probe.reported.swap(began, Ordering::AcqRel) == began {
            return;
        }
        g.metrics.handler_blocking.increment(1);
        let now = Instant::now();
        let log = match self.last_logged.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60));
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if log {
            tracing::warn!(
                stream = g.stream(),
                group = g.group(),
                handlers = ?g.handlers.types(),
                held_ms = held_us / 1000,
                still_blocked = ongoing,
                "a handler held a runtime thread without yielding: blocking code in an async \
                 handler stalls every other task on that thread. Run such handlers with \
                 SubscriberOptions::blocking(true) (#[subscriber(blocking)]), or move the \
                 blocking call into tokio::task::spawn_blocking"
            );
        }
    }
}

/// A handler's future with each poll timed on its probe.
pub(crate) struct Watched<'a, F> {
    inner: F,
    g: &'a Group,
    probe: &'a PollProbe,
}

impl<'a, F> Watched<'a, F> {
    pub(crate) fn new(inner: F, g: &'a Group, probe: usize) -> Self {
        Watched {
            inner,
            g,
            probe: &g.blocking.probes[g.blocking.probe(probe)],
        }
    }
}

impl<F: Future + Unpin> Future for Watched<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let began = now_us();
        self.probe.began.store(began, Ordering::Release);
        let out = Pin::new(&mut self.inner).poll(cx);
        self.probe.began.store(0, Ordering::Release);
        let held = now_us().saturating_sub(began);
        let watch = &self.g.blocking;
        if held > watch.threshold_us {
            watch.report(self.g, self.probe, began, held, false);
        }
        out
    }
}

/// How often the keeper looks for handlers stuck in one poll: often enough to report a stretch
/// soon after it passes the threshold, never busier than every 10 ms.
fn watch_interval(threshold: Duration) -> Duration {
    (threshold / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Reports handlers stuck in one poll until the group stops (runs on the keeper's thread).
pub(crate) async fn watch_loop(g: Arc<Group>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !g.blocking.enabled() {
        return;
    }
    let every = watch_interval(Duration::from_micros(g.blocking.threshold_us));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => g.blocking.check(&g),
            _ = stop.changed() => return,
        }
    }
}
