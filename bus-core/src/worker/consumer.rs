//! One subscriber: the read loop, the pending-entry scanner, the lease heartbeat, handler tasks,
//! retries, dead-lettering and shutdown.
//!
//! Every entry this consumer owns in Redis and is responsible for is in `Shared::held`: being
//! handled, waiting for its retry, or just claimed. The heartbeat renews all of them; shutdown
//! releases whatever is left.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use futures::FutureExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use super::acker::{self, AckSender};
use super::{Dispatch, Erased, WorkerSettings};
use crate::bus::Bus;
use crate::envelope::{self, RawEntry};
use crate::error::{Action, Result};
use crate::metrics::SubscriberMetrics;
use crate::names::Priority;
use crate::redis::{self, value_bytes, value_string};
use crate::status::{self, State, StatusWrite};
use crate::subscriber::{make_context, ContextNames, StartFrom, SubscriberOptions};

/// Most entries asked for in one read.
const MAX_READ: usize = 256;
/// Most entries claimed by one XAUTOCLAIM call.
const MAX_CLAIM: usize = 100;
/// Most yields the read loop spends waiting for fast handlers to free more slots before a read.
const COALESCE_YIELDS: usize = 16;
/// Most ids in one lease-renewal or release script call.
const SCRIPT_CHUNK: usize = 200;

/// What this consumer is doing with an entry it owns. The token tells apart successive states
/// of one entry, so a task handle is attached to the state it belongs to.
enum Held {
    /// Claimed by the scanner or found in its own pending list; about to be checked.
    Claimed,
    /// A handler is running it.
    Running(u64, Option<AbortHandle>),
    /// Waiting for its retry (timer task).
    Waiting(u64, Option<AbortHandle>),
}

/// A priority lane: index into [`Shared::lanes`], highest priority first.
type Lane = usize;

/// The keys of one priority lane.
struct LaneKeys {
    key: String,
    retry_key: String,
}

/// One delivery for a handler task.
struct Job {
    lane: Lane,
    entry: RawEntry,
    attempt: u32,
    permit: OwnedSemaphorePermit,
}

/// Long-lived handler tasks, one per concurrency slot: a delivery is sent to an idle one instead
/// of spawning a task per entry (no task allocation per event). A task puts itself back on the
/// idle list before it releases its slot, so whoever holds a slot finds an idle task.
struct Pool {
    idle: Mutex<Vec<usize>>,
    senders: Vec<mpsc::UnboundedSender<Job>>,
    tasks: Vec<AbortHandle>,
}

/// State shared by the tasks of one subscriber.
pub(crate) struct Shared {
    sub: Arc<dyn Erased>,
    opts: SubscriberOptions,
    settings: WorkerSettings,
    bus: Bus,
    client: Client,
    /// Per priority lane (see [`Lane`]): the stream key and the retry hash.
    lanes: Vec<LaneKeys>,
    dlq_key: String,
    consumer: Arc<str>,
    sem: Arc<Semaphore>,
    acks: Mutex<Option<Vec<AckSender>>>,
    /// Per lane: entry id → state.
    held: Mutex<Vec<HashMap<String, Held>>>,
    tokens: std::sync::atomic::AtomicU64,
    /// Stream, group and consumer names shared by every delivery's context.
    names: ContextNames,
    /// Handler tasks (started by [`Runtime::run`]).
    pool: std::sync::OnceLock<Pool>,
    stop: watch::Receiver<bool>,
    metrics: SubscriberMetrics,
}

impl Shared {
    fn group(&self) -> &str {
        self.opts.group()
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn vt(&self) -> Duration {
        self.opts.get_visibility_timeout()
    }

    fn key(&self, lane: Lane) -> &str {
        &self.lanes[lane].key
    }

    fn retry_key(&self, lane: Lane) -> &str {
        &self.lanes[lane].retry_key
    }

    /// KEYS of the per-entry scripts: the lane's stream, the dead-letter stream, the lane's
    /// retry hash.
    fn entry_keys(&self, lane: Lane) -> Vec<String> {
        vec![
            self.key(lane).to_owned(),
            self.dlq_key.clone(),
            self.retry_key(lane).to_owned(),
        ]
    }

    /// The ARGV every per-entry script starts with: group, entry id, consumer.
    fn entry_args(&self, id: &str, more: impl IntoIterator<Item = Value>) -> Vec<Value> {
        let mut args = vec![
            Value::from(self.group()),
            Value::from(id),
            Value::from(&*self.consumer),
        ];
        args.extend(more);
        args
    }

    fn lane_of(&self, key: &str) -> Option<Lane> {
        self.lanes.iter().position(|l| l.key == key)
    }

    fn ack(&self, lane: Lane, id: String) {
        if let Ok(guard) = self.acks.lock() {
            if let Some(a) = guard.as_ref().and_then(|a| a.get(lane)) {
                a.ack(id);
            }
        }
    }

    fn hold(&self, lane: Lane, id: &str, state: Held) {
        if let Ok(mut h) = self.held.lock() {
            if let Some(m) = h.get_mut(lane) {
                // Most calls move an entry already held to its next state: no key allocation.
                match m.get_mut(id) {
                    Some(held) => *held = state,
                    None => {
                        m.insert(id.to_owned(), state);
                    }
                }
            }
        }
    }

    fn token(&self) -> u64 {
        self.tokens.fetch_add(1, Ordering::Relaxed)
    }

    /// Attaches a task handle to the state `token` of an entry, if the entry is still in that
    /// state (the task may already have moved it on).
    fn attach(&self, lane: Lane, id: &str, token: u64, handle: AbortHandle) {
        if let Ok(mut h) = self.held.lock() {
            match h.get_mut(lane).and_then(|m| m.get_mut(id)) {
                Some(Held::Running(t, slot)) | Some(Held::Waiting(t, slot)) if *t == token => {
                    *slot = Some(handle);
                }
                _ => {}
            }
        }
    }

    fn release_hold(&self, lane: Lane, id: &str) {
        if let Ok(mut h) = self.held.lock() {
            if let Some(m) = h.get_mut(lane) {
                m.remove(id);
            }
        }
    }

    fn is_held(&self, lane: Lane, id: &str) -> bool {
        self.held
            .lock()
            .map(|h| h.get(lane).is_some_and(|m| m.contains_key(id)))
            .unwrap_or(false)
    }

    fn held_ids(&self) -> Vec<(Lane, String)> {
        self.held
            .lock()
            .map(|h| {
                h.iter()
                    .enumerate()
                    .flat_map(|(lane, m)| m.keys().map(move |id| (lane, id.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn eval(
        &self,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value> {
        redis::eval(script, &self.client, keys, args).await
    }

    /// Backoff before the attempt after `attempt`: exponential from `backoff_min`, capped at
    /// `backoff_max`, with "equal jitter" (a random point in the upper half).
    fn backoff(&self, attempt: u32) -> Duration {
        let (lo, hi) = self.opts.get_backoff();
        let exp = attempt.saturating_sub(1).min(32);
        let base = lo.saturating_mul(1u32 << exp.min(31)).min(hi);
        let r = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        base.mul_f64(0.5 + 0.5 * r).clamp(lo.min(hi), hi)
    }
}

pub(crate) struct Runtime {
    shared: Arc<Shared>,
    /// Entries this consumer name already owned at start (a restart with a reused name).
    own_pending: Vec<(Lane, String)>,
    reader: Client,
    reading: Arc<AtomicBool>,
    /// Read the highest non-empty lane only (see [`Runtime::read`]).
    strict: AtomicBool,
    ackers: Vec<JoinHandle<()>>,
}

impl Runtime {
    /// Creates the group and connects the reader.
    pub(crate) async fn prepare(
        bus: &Bus,
        sub: Arc<dyn Erased>,
        consumer: Arc<str>,
        settings: WorkerSettings,
        stop: watch::Receiver<bool>,
    ) -> Result<Self> {
        let opts = sub.options();
        let keys = bus.keys(sub.stream());
        let dlq_key = keys.dead_letter(opts.group());
        let lanes: Vec<LaneKeys> = Priority::ALL
            .iter()
            .map(|p| LaneKeys {
                key: keys.lane(*p),
                retry_key: keys.lane_retries(*p, opts.group()),
            })
            .collect();
        let client = bus.inner.client.clone();
        let start = match opts.get_start_from() {
            StartFrom::Beginning => "0",
            StartFrom::NewEvents => "$",
        };
        for lane in &lanes {
            if redis::ensure_group(&client, &lane.key, opts.group(), start).await? {
                tracing::info!(
                    stream = sub.stream(),
                    key = %lane.key,
                    group = opts.group(),
                    start,
                    "created consumer group"
                );
            }
        }
        // A connection used only for blocking reads (FRED-NOTES §3): a blocked connection would
        // stall every other command sent on it.
        let reader = client.clone_new();
        reader.init().await?;
        let mut acks = Vec::with_capacity(lanes.len());
        let mut ackers = Vec::with_capacity(lanes.len());
        for lane in &lanes {
            let (a, task) = acker::spawn(client.clone(), lane.key.clone(), opts.group().to_owned());
            acks.push(a);
            ackers.push(task);
        }
        let sem = Arc::new(Semaphore::new(opts.get_concurrency()));
        let mut own = Vec::new();
        for (lane, l) in lanes.iter().enumerate() {
            for id in own_pending(&client, &l.key, opts.group(), &consumer).await? {
                own.push((lane, id));
            }
        }
        let own_pending = own;
        let metrics = SubscriberMetrics::new(sub.stream(), opts.group());
        let names = ContextNames::new(sub.stream(), opts.group(), &consumer);
        Ok(Self {
            own_pending,
            shared: Arc::new(Shared {
                sub,
                opts,
                settings,
                bus: bus.clone(),
                client,
                lanes,
                dlq_key,
                consumer,
                sem,
                acks: Mutex::new(Some(acks)),
                held: Mutex::new((0..Priority::ALL.len()).map(|_| HashMap::new()).collect()),
                tokens: std::sync::atomic::AtomicU64::new(0),
                names,
                pool: std::sync::OnceLock::new(),
                metrics,
                stop,
            }),
            reader,
            reading: Arc::new(AtomicBool::new(true)),
            strict: AtomicBool::new(false),
            ackers,
        })
    }

    pub(crate) fn stream(&self) -> &'static str {
        self.shared.sub.stream()
    }

    pub(crate) fn reader(&self) -> &Client {
        &self.reader
    }

    pub(crate) fn reading_flag(&self) -> Arc<AtomicBool> {
        self.reading.clone()
    }

    /// Releases the connections of a runtime that never ran.
    pub(crate) async fn close(self) {
        if let Ok(mut a) = self.shared.acks.lock() {
            a.take();
        }
        for a in self.ackers {
            let _ = a.await;
        }
        let _ = self.reader.quit().await;
    }

    /// Runs the subscriber until the stop flag is set, then shuts it down.
    pub(crate) async fn run(self) {
        let s = self.shared.clone();
        let span = tracing::info_span!(
            "subscriber",
            stream = s.sub.stream(),
            group = s.group(),
            consumer = %s.consumer
        );
        async move {
            start_pool(&s);
            if !self.own_pending.is_empty() {
                // A restarted consumer with a reused name takes over what it owned before, at
                // once and through the attempt check.
                tracing::info!(count = self.own_pending.len(), "taking over this consumer's own pending entries");
                for lane in 0..s.lanes.len() {
                    let ids: Vec<String> = self
                        .own_pending
                        .iter()
                        .filter(|(l, _)| *l == lane)
                        .map(|(_, id)| id.clone())
                        .collect();
                    if ids.is_empty() {
                        continue;
                    }
                    if let Err(e) = schedule_claimed(&s, lane, ids).await {
                        tracing::warn!(error = %e, "cannot take over own pending entries; the scanner will reclaim them");
                    }
                }
            }
            let scanner = tokio::spawn(scan_loop(s.clone()).in_current_span());
            let heartbeat_stop = watch::channel(false);
            let heartbeat =
                tokio::spawn(heartbeat_loop(s.clone(), heartbeat_stop.1).in_current_span());
            self.read_loop().await;
            self.reading.store(false, Ordering::Release);
            let _ = scanner.await;
            self.finish(heartbeat_stop.0, heartbeat).await;
        }
        .instrument(span)
        .await
    }

    async fn read_loop(&self) {
        let s = &self.shared;
        let concurrency = s.opts.get_concurrency();
        let mut stop = s.stop.clone();
        let mut backoff = Duration::from_millis(100);
        while !s.stopped() {
            // Back-pressure: read only as many entries as there are free slots. The
            // slots are not held during the blocking read, so retries and reclaimed entries can
            // use them meanwhile; each entry read then waits for its slot.
            let first = tokio::select! {
                p = s.sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.changed() => continue,
            };
            // Fast handlers free their slots within microseconds of each other: give the ones
            // already running a moment to finish so the read is not split into many small ones
            // (each read costs a round trip and Redis time). Slow handlers free nothing here, so
            // this costs them one yield.
            let mut free = s.sem.available_permits();
            for _ in 0..COALESCE_YIELDS {
                if free + 1 >= concurrency {
                    break;
                }
                tokio::task::yield_now().await;
                let now = s.sem.available_permits();
                if now == free {
                    break;
                }
                free = now;
            }
            let want = (1 + free + s.opts.get_prefetch()).min(MAX_READ.max(concurrency));
            drop(first);
            if s.stopped() {
                break;
            }
            match self.read(want).await {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    // Held (and so lease-renewed) from now on, even while waiting for a slot.
                    for (lane, entry) in &entries {
                        s.hold(*lane, &entry.id, Held::Claimed);
                    }
                    for (lane, entry) in entries {
                        // Shutdown must not wait for a slot behind a hung handler: entries not
                        // started stay held and are released for immediate reclaim. A free slot
                        // wins over a stop already signalled, so what was read is handled if it can.
                        let permit = tokio::select! {
                            biased;
                            p = s.sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                            _ = stop.wait_for(|stopped| *stopped) => break,
                        };
                        // A fresh delivery through `>` is always attempt 1.
                        spawn_run(s, lane, entry, 1, permit);
                    }
                }
                Err(e) if e.is_nogroup() => {
                    tracing::error!(
                        error = %e,
                        "stream or consumer group vanished (Redis restarted without persistence, \
                         or the key was deleted); re-creating the group from the start of the stream"
                    );
                    s.metrics.group_recreated.increment(1);
                    for lane in &s.lanes {
                        if let Err(e) =
                            redis::ensure_group(&s.client, &lane.key, s.group(), "0").await
                        {
                            tracing::warn!(error = %e, "cannot re-create the consumer group");
                            pause(&mut stop, &mut backoff).await;
                            break;
                        }
                    }
                }
                Err(e) => {
                    if !s.stopped() {
                        tracing::warn!(error = %e, "read failed; retrying");
                        pause(&mut stop, &mut backoff).await;
                    }
                }
            }
        }
    }

    /// Reads up to `count` new entries, higher priority lanes first.
    ///
    /// Usually one plain non-blocking `XREADGROUP` over all lanes: when only one lane has new
    /// entries (the common case) that is exact. When several have, that read may return up to
    /// `count` from each; they run highest lane first, and the following reads switch to a
    /// script that reads only the highest non-empty lane (strict priority) until a read comes
    /// back short. When nothing is waiting, one blocking read on all lanes waits for the next.
    async fn read(&self, count: usize) -> Result<Vec<(Lane, RawEntry)>> {
        let s = &self.shared;
        let keys: Vec<String> = s.lanes.iter().map(|l| l.key.clone()).collect();
        let strict = self.strict.load(Ordering::Relaxed);
        let reply: Value = if strict {
            redis::eval(
                redis::lane_read_script(),
                &self.reader,
                keys.clone(),
                vec![
                    Value::from(s.group()),
                    Value::from(&*s.consumer),
                    Value::from(count as i64),
                ],
            )
            .await?
        } else {
            let ids = vec![">"; keys.len()];
            self.reader
                .xreadgroup(
                    s.group(),
                    &*s.consumer,
                    Some(count as u64),
                    None,
                    false,
                    keys.clone(),
                    ids,
                )
                .await?
        };
        let mut entries = self.by_lane(reply);
        let lanes_hit = entries
            .iter()
            .map(|(l, _)| *l)
            .fold(0u8, |mask, l| mask | (1 << l))
            .count_ones();
        let next_strict = if strict {
            entries.len() >= count
        } else {
            lanes_hit > 1
        };
        self.strict.store(next_strict, Ordering::Relaxed);
        if entries.is_empty() && !s.stopped() {
            let block_ms = s.opts.get_block_timeout().as_millis() as u64;
            let ids = vec![">"; keys.len()];
            let reply: Value = self
                .reader
                .xreadgroup(
                    s.group(),
                    &*s.consumer,
                    Some(count as u64),
                    Some(block_ms),
                    false,
                    keys,
                    ids,
                )
                .await?;
            entries = self.by_lane(reply);
        }
        Ok(entries)
    }

    fn by_lane(&self, reply: Value) -> Vec<(Lane, RawEntry)> {
        let mut out: Vec<(Lane, RawEntry)> = redis::parse_read_reply_keyed(reply)
            .into_iter()
            .filter_map(|(key, e)| self.shared.lane_of(&key).map(|lane| (lane, e)))
            .collect();
        out.sort_by_key(|(lane, _)| *lane);
        out
    }

    /// Shutdown: stop retry timers, wait for running handlers within the grace period
    /// (leases still renewed), flush acks, release what is left, leave the group if owning nothing.
    async fn finish(self, heartbeat_stop: watch::Sender<bool>, heartbeat: JoinHandle<()>) {
        let s = &self.shared;
        // Entries waiting for a retry or just claimed: stop their tasks; they are released below.
        if let Ok(h) = s.held.lock() {
            for state in h.iter().flat_map(HashMap::values) {
                if let Held::Waiting(_, Some(a)) = state {
                    a.abort();
                }
            }
        }
        let all = s.opts.get_concurrency() as u32;
        let drained = tokio::time::timeout(s.settings.grace, s.sem.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!("grace period over; abandoning running handlers");
            let running: Vec<AbortHandle> = s
                .held
                .lock()
                .map(|h| {
                    h.iter()
                        .flat_map(HashMap::values)
                        .filter_map(|st| match st {
                            Held::Running(_, Some(a)) => Some(a.clone()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            for a in running {
                a.abort();
            }
            if let Some(pool) = s.pool.get() {
                for t in &pool.tasks {
                    t.abort();
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), s.sem.acquire_many(all)).await;
        }
        let _ = heartbeat_stop.send(true);
        let _ = heartbeat.await;
        if let Ok(mut a) = s.acks.lock() {
            a.take();
        }
        for a in self.ackers {
            let _ = a.await;
        }
        let left = s.held_ids();
        for lane in 0..s.lanes.len() {
            let ids: Vec<String> = left
                .iter()
                .filter(|(l, _)| *l == lane)
                .map(|(_, id)| id.clone())
                .collect();
            if !ids.is_empty() {
                release(s, lane, &ids).await;
            }
            delete_consumer_if_idle(s, lane, &s.consumer, 0).await;
        }
        if let Some(pool) = s.pool.get() {
            for t in &pool.tasks {
                t.abort();
            }
        }
        let _ = self.reader.quit().await;
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, backoff: &mut Duration) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        _ = stop.changed() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// Starts the handler tasks.
fn start_pool(s: &Arc<Shared>) {
    let n = s.opts.get_concurrency();
    let mut senders = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let shared = s.clone();
        let task = tokio::spawn(
            async move {
                while let Some(job) = rx.recv().await {
                    process(&shared, job.lane, job.entry, job.attempt).await;
                    if let Some(pool) = shared.pool.get() {
                        if let Ok(mut idle) = pool.idle.lock() {
                            idle.push(i);
                        }
                    }
                    drop(job.permit);
                }
            }
            .in_current_span(),
        );
        senders.push(tx);
        tasks.push(task.abort_handle());
    }
    let _ = s.pool.set(Pool {
        idle: Mutex::new((0..n).rev().collect()),
        senders,
        tasks,
    });
}

/// Runs one delivery on an idle handler task, holding one concurrency slot.
fn spawn_run(
    s: &Arc<Shared>,
    lane: Lane,
    entry: RawEntry,
    attempt: u32,
    permit: OwnedSemaphorePermit,
) {
    let id = entry.id.clone();
    let token = s.token();
    s.hold(lane, &id, Held::Running(token, None));
    let job = Job {
        lane,
        entry,
        attempt,
        permit,
    };
    let job = match s.pool.get() {
        Some(pool) => {
            let idle = pool.idle.lock().ok().and_then(|mut i| i.pop());
            match idle.and_then(|i| pool.senders.get(i).map(|tx| (i, tx))) {
                Some((i, tx)) => match tx.send(job) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(job)) => {
                        if let Ok(mut idle) = pool.idle.lock() {
                            idle.push(i);
                        }
                        job
                    }
                },
                None => job,
            }
        }
        None => job,
    };
    // No idle handler task (cannot happen while slots and tasks match): run it on its own.
    let Job {
        lane,
        entry,
        attempt,
        permit,
    } = job;
    let shared = s.clone();
    let task = tokio::spawn(async move {
        process(&shared, lane, entry, attempt).await;
        drop(permit);
    });
    s.attach(lane, &id, token, task.abort_handle());
}

/// Decodes, runs and settles one delivery.
async fn process(s: &Arc<Shared>, lane: Lane, entry: RawEntry, attempt: u32) {
    let id = entry.id;
    let Some(fields) = entry.fields else {
        s.metrics.deleted_pending.increment(1);
        tracing::warn!(entry_id = %id, "entry was deleted while pending (trimmed or XDEL); acknowledging it away");
        s.ack(lane, id.clone());
        s.release_hold(lane, &id);
        return;
    };
    let mut env = match envelope::decode(&fields) {
        Ok(env) => env,
        Err(e) => {
            Box::pin(dead_letter(s, lane, &id, attempt, "decode", &e.to_string())).await;
            return;
        }
    };
    let foreign_type = env.event_type != s.sub.event_name();
    let other_group = env.to.as_deref().is_some_and(|g| g != s.group());
    if foreign_type || other_group {
        tracing::debug!(entry_id = %id, event_type = %env.event_type, to = ?env.to, "not for this subscriber; skipped");
        s.ack(lane, id.clone());
        s.release_hold(lane, &id);
        return;
    }
    let span = tracing::info_span!(
        "handle",
        stream = s.sub.stream(),
        group = s.group(),
        event_id = %env.event_id,
        entry_id = %id,
        attempt
    );
    #[cfg(feature = "opentelemetry")]
    crate::otel::continue_trace(&span, &env.headers);
    let event_id = env.event_id.clone();
    let ctx = make_context(
        std::mem::take(&mut env.event_id),
        std::mem::take(&mut env.event_type),
        id.clone(),
        &s.names,
        attempt,
        env.published_at_ms,
        std::mem::take(&mut env.headers),
        s.opts.get_track_status(),
    );
    if s.opts.get_track_status() {
        Box::pin(record(s, &event_id, State::Running, attempt, None, None)).await;
    }
    let published_at_ms = env.published_at_ms;
    let started = Instant::now();
    s.metrics
        .latency_seconds
        .record(crate::bus::now_ms().saturating_sub(published_at_ms) as f64 / 1000.0);
    let outcome = AssertUnwindSafe(s.sub.dispatch(env, ctx))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    s.metrics
        .handle_seconds
        .record(started.elapsed().as_secs_f64());
    let failure = match outcome {
        Ok(Dispatch::Done(Ok(output))) => {
            s.metrics.handled.increment(1);
            if s.opts.get_track_status() {
                Box::pin(record(
                    s,
                    &event_id,
                    State::Succeeded,
                    attempt,
                    None,
                    output.result.as_deref(),
                ))
                .await;
            }
            s.ack(lane, id.clone());
            s.release_hold(lane, &id);
            if attempt > 1 {
                // Forget the retry record of an event that finally succeeded.
                let forget = s.client.hdel::<i64, _, _>(s.retry_key(lane), id.as_str());
                let _ = Box::pin(forget).await;
            }
            return;
        }
        Ok(Dispatch::Undecodable(e)) => (e, None, "decode"),
        Ok(Dispatch::Done(Err(e))) => match e.action() {
            Action::Reject => (e.to_string(), None, "rejected"),
            Action::RetryAfter(d) => (e.to_string(), Some(d), ""),
            _ => (e.to_string(), None, ""),
        },
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            (format!("panic: {msg}"), None, "")
        }
    };
    let (error, delay, mut reason) = failure;
    if reason.is_empty() {
        s.metrics.failed.increment(1);
        if attempt >= s.opts.get_max_attempts() {
            reason = "max_attempts";
        }
    }
    if !reason.is_empty() {
        if Box::pin(dead_letter(s, lane, &id, attempt, reason, &error))
            .instrument(span)
            .await
        {
            Box::pin(record(
                s,
                &event_id,
                State::Dead,
                attempt,
                Some(&error),
                None,
            ))
            .await;
        }
        return;
    }
    let delay = delay.unwrap_or_else(|| s.backoff(attempt));
    if Box::pin(schedule_retry(s, lane, &id, attempt, delay, &error))
        .instrument(span)
        .await
    {
        Box::pin(record(
            s,
            &event_id,
            State::Failed,
            attempt,
            Some(&error),
            None,
        ))
        .await;
    }
}

/// Writes this group's status for an event, if the subscriber tracks status. A failed write is
/// logged and does not change how the event is handled.
async fn record(
    s: &Shared,
    event_id: &str,
    state: State,
    attempts: u32,
    error: Option<&str>,
    result: Option<&[u8]>,
) {
    if !s.opts.get_track_status() || event_id.is_empty() {
        return;
    }
    let w = StatusWrite {
        state,
        attempts,
        error,
        result,
    };
    if let Err(e) = status::write(
        &s.bus,
        s.sub.stream(),
        s.group(),
        event_id,
        w,
        s.opts.get_status_ttl(),
    )
    .await
    {
        tracing::warn!(error = %e, event_id, "cannot record the event's status");
    }
}

/// Retries a script call on connection errors (bounded), so a short outage does not turn into a
/// lost outcome; the entry stays pending either way.
async fn eval_retrying(
    s: &Shared,
    script: &fred::types::scripts::Script,
    keys: Vec<String>,
    args: Vec<Value>,
) -> Result<Value> {
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match s.eval(script, keys.clone(), args.clone()).await {
            Err(e) if e.is_connection() && tries < 8 => {
                tries += 1;
                tracing::warn!(error = %e, "script failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

/// Moves an entry to the group's dead-letter stream (atomic, fenced by owner and attempt).
async fn dead_letter(
    s: &Arc<Shared>,
    lane: Lane,
    id: &str,
    attempt: u32,
    reason: &str,
    error: &str,
) -> bool {
    let r = eval_retrying(
        s,
        redis::dead_letter_script(),
        s.entry_keys(lane),
        s.entry_args(
            id,
            [
                Value::from(reason),
                Value::from(error),
                Value::from(attempt as i64),
            ],
        ),
    )
    .await;
    let moved = matches!(r, Ok(Value::Integer(1)));
    match r {
        Ok(Value::Integer(1)) => {
            s.metrics.dead_lettered(reason);
            tracing::warn!(
                entry_id = id,
                reason,
                error,
                attempt,
                "moved to the dead-letter stream"
            );
        }
        Ok(other) => {
            tracing::warn!(entry_id = id, code = ?other, "not dead-lettered: another attempt owns this entry now");
        }
        Err(e) => {
            tracing::error!(error = %e, entry_id = id, "dead-letter move failed; the entry stays pending and will be retried");
        }
    }
    s.release_hold(lane, id);
    moved
}

/// Records the retry (fenced) and waits for it locally; the lease is renewed meanwhile, so other
/// workers leave the entry alone however long the delay. If this process dies, the scanner
/// of another one takes it over and honours the recorded due time.
async fn schedule_retry(
    s: &Arc<Shared>,
    lane: Lane,
    id: &str,
    attempt: u32,
    delay: Duration,
    error: &str,
) -> bool {
    let r = eval_retrying(
        s,
        redis::retry_script(),
        vec![s.key(lane).to_owned(), s.retry_key(lane).to_owned()],
        s.entry_args(
            id,
            [
                Value::from(attempt as i64),
                Value::from(delay.as_millis() as i64),
                Value::from(error),
            ],
        ),
    )
    .await;
    match r {
        Ok(Value::Integer(due)) if due > 0 => {
            s.metrics.retried.increment(1);
            tracing::warn!(
                entry_id = id,
                attempt,
                ?delay,
                error,
                "handler failed; retrying after backoff"
            );
            wait_then_take(s, lane, id, delay, false);
            true
        }
        Ok(other) => {
            tracing::warn!(entry_id = id, code = ?other, "retry not scheduled: another attempt owns this entry now");
            s.release_hold(lane, id);
            false
        }
        Err(e) => {
            tracing::error!(error = %e, entry_id = id, "cannot schedule the retry; the entry will be reclaimed after the visibility timeout");
            s.release_hold(lane, id);
            false
        }
    }
}

/// Holds an entry until `delay` has passed, then takes it for its next attempt (alone in this
/// process when `isolate` is set).
fn wait_then_take(s: &Arc<Shared>, lane: Lane, id: &str, delay: Duration, isolate: bool) {
    let token = s.token();
    s.hold(lane, id, Held::Waiting(token, None));
    let shared = s.clone();
    let id2 = id.to_owned();
    let task = tokio::spawn(
        async move {
            tokio::time::sleep(delay).await;
            take(&shared, lane, &id2, isolate).await;
        }
        .in_current_span(),
    );
    s.attach(lane, id, token, task.abort_handle());
}

/// Takes a held entry for a new attempt: waits for a free slot, then the take script checks the
/// attempt limit (dead-lettering instead of running when it is used up) and claims the entry with
/// a delivery-count bump.
async fn take(s: &Arc<Shared>, lane: Lane, id: &str, isolate: bool) {
    let mut stop = s.stop.clone();
    let slots = if isolate {
        s.opts.get_concurrency() as u32
    } else {
        1
    };
    let permit = tokio::select! {
        p = s.sem.clone().acquire_many_owned(slots) => match p { Ok(p) => p, Err(_) => return },
        _ = stop.changed() => return,
    };
    if s.stopped() {
        return;
    }
    let r = eval_retrying(
        s,
        redis::take_script(),
        s.entry_keys(lane),
        s.entry_args(id, [Value::from(i64::from(s.opts.get_max_attempts()))]),
    )
    .await;
    let parts = match r {
        Ok(Value::Array(parts)) => parts,
        Ok(other) => {
            tracing::error!(entry_id = id, reply = ?other, "unexpected reply from the take script");
            s.release_hold(lane, id);
            return;
        }
        Err(e) => {
            // Let go of it: without lease renewals a scanner (possibly ours) reclaims it after the
            // visibility timeout and tries again.
            tracing::warn!(error = %e, entry_id = id, "cannot take the entry for its next attempt");
            s.release_hold(lane, id);
            return;
        }
    };
    let mut it = parts.into_iter();
    let code = it.next().and_then(|v| v.as_i64()).unwrap_or(-9);
    match code {
        1 => {
            let count = it.next().and_then(|v| v.as_u64()).unwrap_or(0) as u32;
            let fields = it.next().map(|f| match f {
                Value::Array(flat) => {
                    let mut out = Vec::with_capacity(flat.len() / 2);
                    let mut kv = flat.into_iter();
                    while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                        out.push((
                            value_bytes(k).unwrap_or_default(),
                            value_bytes(v).unwrap_or_default(),
                        ));
                    }
                    out
                }
                _ => Vec::new(),
            });
            tracing::info!(entry_id = id, attempt = count, "running a new attempt");
            spawn_run(
                s,
                lane,
                RawEntry {
                    id: id.to_owned(),
                    fields,
                },
                count.max(1),
                permit,
            );
        }
        0 => {
            let attempts = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
            let event_id = it.next().and_then(value_string).unwrap_or_default();
            record(
                s,
                &event_id,
                State::Dead,
                attempts as u32,
                Some("attempts used up"),
                None,
            )
            .await;
            s.metrics.dead_lettered("max_attempts");
            tracing::warn!(
                entry_id = id,
                attempts,
                "attempts used up; moved to the dead-letter stream"
            );
            s.release_hold(lane, id);
        }
        -3 => {
            s.metrics.deleted_pending.increment(1);
            tracing::warn!(
                entry_id = id,
                "entry was deleted while pending (trimmed or XDEL); acknowledged away"
            );
            s.release_hold(lane, id);
        }
        _ => {
            tracing::debug!(entry_id = id, code, "entry is no longer ours");
            s.release_hold(lane, id);
        }
    }
}

/// The pending-entry scanner: every half visibility timeout, claims entries idle for
/// longer than the visibility timeout (their worker died or stalled) with `XAUTOCLAIM … JUSTID`,
/// which does not count a delivery, then takes each one when its retry is due. It claims no more
/// than it has free slots, skips a round while Redis does not answer and the first round
/// after (so lease renewals queued during a stall land first), and reaps idle consumers.
async fn scan_loop(s: Arc<Shared>) {
    let mut stop = s.stop.clone();
    let interval = (s.vt() / 2).max(Duration::from_millis(50));
    let mut healthy = true;
    let mut first = true;
    let mut last_reap = Instant::now();
    loop {
        if !first {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
        if s.stopped() {
            return;
        }
        let ping = tokio::time::timeout(
            Duration::from_millis(500).min(interval),
            s.client.ping::<Value>(None),
        )
        .await;
        if !matches!(ping, Ok(Ok(_))) {
            if healthy {
                tracing::warn!("Redis is not answering; pausing reclaim");
            }
            healthy = false;
            continue;
        }
        if !healthy {
            tracing::info!("Redis answers again; reclaim resumes next round");
            healthy = true;
            continue;
        }
        first = false;
        tracing::trace!("reclaim scan");
        for lane in 0..s.lanes.len() {
            if let Err(e) = reclaim(&s, lane).await {
                if !e.is_nogroup() {
                    tracing::warn!(error = %e, "reclaim scan failed");
                }
            }
        }
        if let Some(after) = s.settings.reap_after {
            if last_reap.elapsed() >= (after / 4).max(interval) {
                last_reap = Instant::now();
                for lane in 0..s.lanes.len() {
                    reap_consumers(&s, lane, after).await;
                }
            }
        }
    }
}

async fn own_pending(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
) -> Result<Vec<String>> {
    let rows: Value = client
        .xpending(key, group, ("-", "+", 10_000, consumer))
        .await?;
    Ok(match rows {
        Value::Array(rows) => rows
            .into_iter()
            .filter_map(|r| match r {
                Value::Array(mut cols) if !cols.is_empty() => value_string(cols.swap_remove(0)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

async fn reclaim(s: &Arc<Shared>, lane: Lane) -> Result<()> {
    let mut budget = s.sem.available_permits();
    if budget == 0 {
        return Ok(());
    }
    let mut cursor = "0-0".to_owned();
    let mut claimed_all = Vec::new();
    loop {
        let count = budget.min(MAX_CLAIM);
        let reply: Value = s
            .client
            .xautoclaim(
                s.key(lane),
                s.group(),
                &*s.consumer,
                s.vt().as_millis() as u64,
                cursor.as_str(),
                Some(count as u64),
                true,
            )
            .await?;
        tracing::trace!(reply = ?reply, "XAUTOCLAIM");
        let Some((next, claimed, deleted)) = redis::parse_autoclaim_justid(reply) else {
            tracing::error!("unexpected XAUTOCLAIM reply");
            break;
        };
        if !deleted.is_empty() {
            // pending entries whose data is gone (trimmed or XDEL): the server already
            // dropped them from the pending list.
            s.metrics.deleted_pending.increment(deleted.len() as u64);
            tracing::warn!(count = deleted.len(), ids = ?deleted, "pending entries were deleted from the stream before being handled; data was lost upstream");
            let _: std::result::Result<i64, _> = s.client.hdel(s.retry_key(lane), deleted).await;
        }
        budget = budget.saturating_sub(claimed.len());
        claimed_all.extend(claimed.into_iter().filter(|id| !s.is_held(lane, id)));
        if next == "0-0" || budget == 0 {
            break;
        }
        cursor = next;
    }
    if !claimed_all.is_empty() {
        s.metrics.reclaimed.increment(claimed_all.len() as u64);
        tracing::info!(
            count = claimed_all.len(),
            "reclaimed entries past the visibility timeout"
        );
        schedule_claimed(s, lane, claimed_all).await?;
    }
    Ok(())
}

/// Holds freshly claimed entries and takes each one when its recorded retry is due (at once when
/// there is no record: its worker died mid-attempt).
async fn schedule_claimed(s: &Arc<Shared>, lane: Lane, ids: Vec<String>) -> Result<()> {
    for id in &ids {
        s.hold(lane, id, Held::Claimed);
    }
    let infos: Vec<Option<String>> = if ids.len() == 1 {
        vec![s.client.hget(s.retry_key(lane), ids[0].as_str()).await?]
    } else {
        s.client.hmget(s.retry_key(lane), ids.clone()).await?
    };
    let now_ms = redis_now_ms(&s.client).await?;
    for (id, info) in ids.into_iter().zip(infos) {
        let due = info
            .as_deref()
            .and_then(|i| i.split('|').next())
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0);
        let wait = Duration::from_millis(due.saturating_sub(now_ms));
        // No retry record: its last attempt never finished (the worker died or stalled). It may
        // be a poison pill that kills its process, so it runs alone, and cannot take innocent
        // neighbours down with it (their delivery counts would grow with every crash).
        let isolate = info.is_none();
        wait_then_take(s, lane, &id, wait, isolate);
    }
    Ok(())
}

async fn redis_now_ms(client: &Client) -> Result<u64> {
    let (secs, micros): (u64, u64) = client
        .custom(
            fred::types::CustomCommand::new_static("TIME", None, false),
            Vec::<Value>::new(),
        )
        .await?;
    Ok(secs * 1000 + micros / 1000)
}

/// Deletes consumers of this group that have been idle for `after` and own nothing. A
/// consumer that still owns entries is never deleted: the scanner reclaims its entries first.
async fn reap_consumers(s: &Arc<Shared>, lane: Lane, after: Duration) {
    let infos: std::result::Result<Vec<HashMap<String, Value>>, _> =
        s.client.xinfo_consumers(s.key(lane), s.group()).await;
    let Ok(infos) = infos else { return };
    for c in infos {
        let name = c
            .get("name")
            .and_then(|v| v.as_string())
            .unwrap_or_default();
        let pending = c.get("pending").and_then(Value::as_u64).unwrap_or(1);
        let idle = c.get("idle").and_then(Value::as_u64).unwrap_or(0);
        if name.is_empty() || name == *s.consumer || pending > 0 || idle < after.as_millis() as u64
        {
            continue;
        }
        delete_consumer_if_idle(s, lane, &name, after.as_millis() as u64).await;
    }
}

async fn delete_consumer_if_idle(s: &Shared, lane: Lane, name: &str, min_idle_ms: u64) {
    let r = s
        .eval(
            redis::delete_idle_consumer_script(),
            vec![s.key(lane).to_owned()],
            vec![
                Value::from(s.group()),
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

/// The lease heartbeat: renews every held entry well inside the visibility timeout, and
/// drops the ones another consumer took over (their outcomes are fenced anyway).
async fn heartbeat_loop(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let interval = (s.vt() / 3).max(Duration::from_millis(30));
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let held = s.held_ids();
        for lane in 0..s.lanes.len() {
            let ids: Vec<&str> = held
                .iter()
                .filter(|(l, _)| *l == lane)
                .map(|(_, id)| id.as_str())
                .collect();
            for chunk in ids.chunks(SCRIPT_CHUNK) {
                let mut args = vec![Value::from(s.group()), Value::from(&*s.consumer)];
                args.extend(chunk.iter().map(|id| Value::from(*id)));
                match s
                    .eval(redis::renew_script(), vec![s.key(lane).to_owned()], args)
                    .await
                {
                    Ok(Value::Array(lost)) => {
                        for id in lost.into_iter().filter_map(value_string) {
                            s.metrics.lease_lost.increment(1);
                            tracing::warn!(entry_id = %id, "lease lost: another worker took this entry over");
                            if let Ok(mut h) = s.held.lock() {
                                if let Some(Held::Waiting(_, Some(a))) =
                                    h.get_mut(lane).and_then(|m| m.remove(&id))
                                {
                                    a.abort();
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                }
            }
        }
    }
}

async fn release(s: &Shared, lane: Lane, ids: &[String]) {
    let mut released = 0;
    for chunk in ids.chunks(SCRIPT_CHUNK) {
        let mut args = vec![Value::from(s.group()), Value::from(&*s.consumer)];
        args.extend(chunk.iter().map(|id| Value::from(id.as_str())));
        match s
            .eval(redis::release_script(), vec![s.key(lane).to_owned()], args)
            .await
        {
            Ok(Value::Integer(n)) => released += n,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot release entries; they will be reclaimed after the visibility timeout")
            }
        }
    }
    tracing::info!(
        released,
        "released unfinished entries for immediate reclaim"
    );
}
