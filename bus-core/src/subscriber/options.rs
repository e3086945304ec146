//! [`SubscriberOptions`]: a group's settings, with the builder methods and `get_*` getters, and
//! the [`StartFrom`] and [`UnknownTypes`] choices.

use std::time::Duration;

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// From the beginning of the retained stream (default): events published before the group's
    /// first deploy are handled too.
    #[default]
    Beginning,
    /// Only events published after the group was created.
    NewEvents,
}

/// What a group does with entries of an event type none of its handlers knows.
///
/// A stream usually carries several event types of one aggregate, and a group often handles only
/// some of them, so the default is [`Skip`](UnknownTypes::Skip): such entries are acknowledged
/// without running, counted in `streambus_skipped_total{reason="unknown_type"}` and logged at
/// `warn` (at most once a minute per type). Choose [`DeadLetter`](UnknownTypes::DeadLetter) for a
/// group that must handle every event of its stream: an entry of a type renamed in a rolling
/// deploy, or published by a newer producer, then waits in the dead-letter stream (reason
/// `unknown_type`) to be replayed once a worker that knows it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownTypes {
    /// Acknowledge without running; counted and logged.
    #[default]
    Skip,
    /// Move to the group's dead-letter stream with reason `unknown_type`.
    DeadLetter,
}

/// Settings of one subscriber (one consumer group on one stream).
///
/// Several subscribers (of different event types of one stream) may share a group in one worker:
/// they then share one reader and one concurrency budget, and their options must be equal.
///
/// ```
/// use bus_core::SubscriberOptions;
/// use std::time::Duration;
///
/// let opts = SubscriberOptions::new("billing")
///     .concurrency(16)
///     .max_attempts(5)
///     .visibility_timeout(Duration::from_secs(30));
/// assert_eq!(opts.get_group(), "billing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberOptions {
    group: String,
    concurrency: usize,
    max_attempts: u32,
    visibility_timeout: Duration,
    start: StartFrom,
    block: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    prefetch: Option<usize>,
    track_status: bool,
    status_ttl: Duration,
    status_safety_ttl: Duration,
    handler_timeout: Option<Duration>,
    blocking: bool,
    unknown_types: UnknownTypes,
    max_held: Option<usize>,
    max_entry_bytes: usize,
    max_dead_letters: u64,
    max_result_bytes: usize,
}

impl SubscriberOptions {
    /// Defaults for `group`: concurrency 16, 5 attempts, 30 s visibility timeout, retry backoff
    /// from 1 s to 5 min, start from the beginning of the stream, 2 s blocking reads.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            concurrency: 16,
            max_attempts: 5,
            visibility_timeout: Duration::from_secs(30),
            start: StartFrom::Beginning,
            block: Duration::from_secs(2),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            prefetch: None,
            track_status: false,
            status_ttl: Duration::from_secs(24 * 3600),
            status_safety_ttl: Duration::from_secs(7 * 24 * 3600),
            handler_timeout: None,
            blocking: false,
            unknown_types: UnknownTypes::Skip,
            max_held: None,
            max_entry_bytes: 2 * 1024 * 1024,
            max_dead_letters: 100_000,
            max_result_bytes: 64 * 1024,
        }
    }

    /// The consumer group.
    pub fn get_group(&self) -> &str {
        &self.group
    }

    /// Renames the consumer group.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Most handlers running at once in one worker process (back-pressure: the worker reads no more
    /// than it can run). At least 1.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Attempts before an event is dead-lettered (default 5; see [`Context::attempt`](crate::Context::attempt) for what
    /// counts). At least 1.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// How long a delivery may stay unacknowledged without a heartbeat before another worker takes
    /// it over (default 30 s).
    #[must_use]
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// Where a newly created group starts (default [`StartFrom::Beginning`]).
    #[must_use]
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// How long one blocking read waits for new entries (default 2 s). Shorter values make idle
    /// workers poll more often; they never delay delivery of new entries.
    #[must_use]
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.block = d;
        self
    }

    /// Shortest retry delay (default 1 s): attempt `n` fails → the next runs after about
    /// `backoff_min × 2^(n-1)`, capped at [`backoff_max`](Self::backoff_max), with jitter.
    #[must_use]
    pub fn backoff_min(mut self, d: Duration) -> Self {
        self.backoff_min = d;
        self
    }

    /// Longest retry delay (default 5 min).
    #[must_use]
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.backoff_max = d;
        self
    }

    /// Records per-event status for this group — state (`running`, `failed`, `succeeded`, `dead`),
    /// attempts, last error and the handler's returned value — in `<prefix>:{<stream>}:status:<event
    /// id>`, and announces completion over Pub/Sub, for [`Bus::status`](crate::Bus::status),
    /// [`Bus::wait_for`](crate::Bus::wait_for) and [`Bus::request`](crate::Bus::request). Costs
    /// two extra round trips per event. Default off.
    #[must_use]
    pub fn track_status(mut self, on: bool) -> Self {
        self.track_status = on;
        self
    }

    /// How long a status record lives after its last completion (default 24 h), and at least
    /// after any write (`safety`, default 7 days, for events whose handling never ends).
    #[must_use]
    pub fn status_ttl(mut self, after_completion: Duration, safety: Duration) -> Self {
        self.status_ttl = after_completion;
        self.status_safety_ttl = safety.max(after_completion);
        self
    }

    /// Whether status is tracked.
    pub fn get_track_status(&self) -> bool {
        self.track_status
    }

    /// The status TTLs `(after completion, safety)`.
    pub fn get_status_ttl(&self) -> (Duration, Duration) {
        (self.status_ttl, self.status_safety_ttl)
    }

    /// The shortest retry delay.
    pub fn get_backoff_min(&self) -> Duration {
        self.backoff_min
    }

    /// The longest retry delay.
    pub fn get_backoff_max(&self) -> Duration {
        self.backoff_max
    }

    /// A fixed number of entries a worker reads beyond its free handler slots, instead of the
    /// adaptive default.
    ///
    /// By default a worker measures how long an attempt holds its slot and how long a read
    /// takes, and reads ahead as many entries as it will start within about two read round
    /// trips: up to 256 for fast handlers, where it saves most round trips, and none or one for
    /// handlers of tens of milliseconds, which keep strict back-pressure. It never reads ahead
    /// more than about 50 ms of work or 8 MiB of entries, and not at all while more than one
    /// attempt in ten fails. Read-ahead entries wait in the worker for a slot, leases renewed,
    /// and are invisible to the other workers of the pool meanwhile.
    ///
    /// `prefetch(0)` reads only what the free slots can run at once (strict back-pressure: an
    /// entry is read only when a slot can take it).
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Longest one attempt may run (default: no limit). A handler still running then is abandoned
    /// (its future is dropped) and the attempt counts as failed: it is retried with backoff, or
    /// dead-lettered with reason `timeout` when it was the last. Set it for handlers that call
    /// services which may hang: a hung handler otherwise holds its slot for good.
    #[must_use]
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = Some(limit);
        self
    }

    /// The handler timeout, if any.
    pub fn get_handler_timeout(&self) -> Option<Duration> {
        self.handler_timeout
    }

    /// Runs each handler on Tokio's blocking thread pool instead of the runtime's worker threads
    /// (default off). Turn it on for handlers that block their thread: a synchronous database
    /// driver, file or network I/O without `.await`, CPU-heavy work. The handler is still an async
    /// function with the same [`Context`](crate::Context), results, retries, timeout and panic
    /// handling; it may `.await` as usual, and its blocking calls then hold only a blocking-pool
    /// thread, never a worker thread that other tasks of the process (and other handlers) need.
    ///
    /// The worker notices handlers that block a runtime thread without this option: it logs a
    /// warning naming the subscriber (at most once a minute) and counts each such stretch in
    /// `streambus_handler_blocking_total`. Leases are renewed on a thread of their own either way,
    /// so a blocking handler does not lose its entry to another worker while it runs.
    ///
    /// A blocking handler cannot be interrupted: when its [`handler_timeout`](Self::handler_timeout)
    /// passes, the attempt counts as failed and its slot is freed, but the thread runs the body to
    /// its end. Each running blocking handler holds one blocking-pool thread (Tokio's default pool
    /// has 512), so keep the concurrency below the pool's size.
    ///
    /// ```
    /// use bus_core::SubscriberOptions;
    ///
    /// let opts = SubscriberOptions::new("reports").concurrency(4).blocking(true);
    /// assert!(opts.get_blocking());
    /// ```
    #[must_use]
    pub fn blocking(mut self, on: bool) -> Self {
        self.blocking = on;
        self
    }

    /// Whether handlers run on the blocking thread pool.
    pub fn get_blocking(&self) -> bool {
        self.blocking
    }

    /// What the group does with event types none of its handlers knows (default
    /// [`UnknownTypes::Skip`]).
    #[must_use]
    pub fn unknown_types(mut self, policy: UnknownTypes) -> Self {
        self.unknown_types = policy;
        self
    }

    /// The unknown-type policy.
    pub fn get_unknown_types(&self) -> UnknownTypes {
        self.unknown_types
    }

    /// Most entries one worker holds for this group at once: running, waiting for a slot, and
    /// waiting for a retry (default `2 × concurrency` plus the read-ahead: the fixed
    /// [`prefetch`](Self::prefetch), or the adaptive allowance of the moment). When every handler
    /// fails (a
    /// downstream outage), failed entries wait for their retries inside the worker; this bound
    /// keeps the rest of the backlog in the stream, where other workers can take it, and keeps
    /// the worker's memory and lease renewals bounded.
    #[must_use]
    pub fn max_held(mut self, n: usize) -> Self {
        self.max_held = Some(n);
        self
    }

    /// Largest entry (all field names and values) this group decodes (default 2 MiB: the default
    /// payload limit plus headers and envelope, with room to spare). A larger entry — written by
    /// another producer, or by a bus with a higher payload limit — goes to the dead-letter stream
    /// with reason `too_large` without being decoded.
    #[must_use]
    pub fn max_entry_bytes(mut self, limit: usize) -> Self {
        self.max_entry_bytes = limit;
        self
    }

    /// Most dead letters the group keeps (default 100 000; 0 keeps all): each new dead letter
    /// beyond it removes the oldest, so a poison flood cannot fill Redis.
    #[must_use]
    pub fn max_dead_letters(mut self, n: u64) -> Self {
        self.max_dead_letters = n;
        self
    }

    /// Largest handler result kept in the status record (default 64 KiB, encoded). A larger
    /// result is not stored: the event still succeeds, its status says why the result is
    /// missing, and [`Bus::request`](crate::Bus::request) returns
    /// [`Error::ResultNotKept`](crate::Error::ResultNotKept). (A cut MessagePack value would not
    /// decode, so results are dropped whole rather than truncated.)
    #[must_use]
    pub fn max_result_bytes(mut self, limit: usize) -> Self {
        self.max_result_bytes = limit;
        self
    }

    /// The result size limit.
    pub fn get_max_result_bytes(&self) -> usize {
        self.max_result_bytes
    }

    /// The dead-letter stream cap (0: none).
    pub fn get_max_dead_letters(&self) -> u64 {
        self.max_dead_letters
    }

    /// The entry size limit.
    pub fn get_max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The bound on held entries set with [`max_held`](Self::max_held), or `None` for the
    /// default.
    pub fn get_max_held(&self) -> Option<usize> {
        self.max_held
    }

    /// The bound on held entries while the adaptive read-ahead allows `ahead` entries.
    pub(crate) fn held_bound(&self, ahead: usize) -> usize {
        self.max_held
            .unwrap_or(2 * self.concurrency + self.prefetch.unwrap_or(ahead))
            .max(1)
    }

    /// The fixed read-ahead, or `None` for the adaptive default.
    pub fn get_prefetch(&self) -> Option<usize> {
        self.prefetch
    }

    /// The concurrency limit.
    pub fn get_concurrency(&self) -> usize {
        self.concurrency
    }

    /// The attempt limit.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The visibility timeout.
    pub fn get_visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    /// Where a new group starts.
    pub fn get_start_from(&self) -> StartFrom {
        self.start
    }

    /// The blocking-read timeout.
    pub fn get_block_timeout(&self) -> Duration {
        self.block
    }
}
