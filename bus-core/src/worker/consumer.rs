//! One subscriber's read loop, handler tasks, dead-lettering and shutdown.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use futures::FutureExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::acker::{self, AckSender};
use super::{Dispatch, Erased};
use crate::bus::Bus;
use crate::envelope::{self, RawEntry};
use crate::error::Result;
use crate::redis;
use crate::subscriber::{make_context, StartFrom, SubscriberOptions};

/// Most entries asked for in one read.
const MAX_READ: usize = 256;

/// State shared by the read loop and the handler tasks of one subscriber.
struct Shared {
    sub: Arc<dyn Erased>,
    opts: SubscriberOptions,
    client: Client,
    key: String,
    dlq_key: String,
    consumer: Arc<str>,
    acks: Mutex<Option<AckSender>>,
    /// Entries handed to a handler task and not yet settled (acked, dead-lettered or failed).
    inflight: Mutex<HashSet<String>>,
}

impl Shared {
    fn group(&self) -> &str {
        self.opts.group()
    }

    fn ack(&self, id: String) {
        if let Ok(guard) = self.acks.lock() {
            if let Some(a) = guard.as_ref() {
                a.ack(id);
            }
        }
    }

    fn settle(&self, id: &str) {
        if let Ok(mut set) = self.inflight.lock() {
            set.remove(id);
        }
    }
}

pub(crate) struct Runtime {
    shared: Arc<Shared>,
    reader: Client,
    reading: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    acker: JoinHandle<()>,
}

impl Runtime {
    /// Creates the group and connects the reader.
    pub(crate) async fn prepare(
        bus: &Bus,
        sub: Arc<dyn Erased>,
        consumer: Arc<str>,
        grace: Duration,
        stop: watch::Receiver<bool>,
    ) -> Result<Self> {
        let opts = sub.options();
        let keys = bus.keys(sub.stream());
        let key = keys.stream().to_owned();
        let dlq_key = keys.dead_letter(opts.group());
        let client = bus.inner.client.clone();
        let start = match opts.get_start_from() {
            StartFrom::Beginning => "0",
            StartFrom::NewEvents => "$",
        };
        if redis::ensure_group(&client, &key, opts.group(), start).await? {
            tracing::info!(
                stream = sub.stream(),
                group = opts.group(),
                start,
                "created consumer group"
            );
        }
        // A connection used only for blocking reads (FRED-NOTES §3): a blocked connection would
        // stall every other command sent on it.
        let reader = client.clone_new();
        reader.init().await?;
        let (acks, acker) = acker::spawn(client.clone(), key.clone(), opts.group().to_owned());
        Ok(Self {
            shared: Arc::new(Shared {
                sub,
                opts,
                client,
                key,
                dlq_key,
                consumer,
                acks: Mutex::new(Some(acks)),
                inflight: Mutex::new(HashSet::new()),
            }),
            reader,
            reading: Arc::new(AtomicBool::new(true)),
            stop,
            grace,
            acker,
        })
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
        let _ = self.acker.await;
        let _ = self.reader.quit().await;
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// The read loop, then the shutdown sequence.
    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!(
            "subscriber",
            stream = self.shared.sub.stream(),
            group = self.shared.group(),
            consumer = %self.shared.consumer
        );
        async move {
            let concurrency = self.shared.opts.get_concurrency();
            let sem = Arc::new(Semaphore::new(concurrency));
            let mut tasks = JoinSet::new();
            let mut backoff = Duration::from_millis(100);
            while !self.stopped() {
                while tasks.try_join_next().is_some() {}
                // Back-pressure: read only as many entries as there are free slots.
                let first = tokio::select! {
                    p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = self.stop.changed() => continue,
                };
                let mut permits = vec![first];
                while permits.len() < MAX_READ.min(concurrency) {
                    match sem.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => break,
                    }
                }
                if self.stopped() {
                    break;
                }
                match self.read(permits.len()).await {
                    Ok(entries) => {
                        backoff = Duration::from_millis(100);
                        for entry in entries {
                            let permit = match permits.pop() {
                                Some(p) => p,
                                // More entries than asked for: wait for a slot rather than overrun.
                                None => match sem.clone().acquire_owned().await {
                                    Ok(p) => p,
                                    Err(_) => break,
                                },
                            };
                            self.spawn_handler(&mut tasks, entry, permit);
                        }
                    }
                    Err(e) if e.is_nogroup() => {
                        tracing::error!(
                            error = %e,
                            "stream or consumer group vanished (Redis restarted without persistence, \
                             or the key was deleted); re-creating the group from the start of the stream"
                        );
                        if let Err(e) = redis::ensure_group(&self.shared.client, &self.shared.key, self.shared.group(), "0").await {
                            tracing::warn!(error = %e, "cannot re-create the consumer group");
                            self.pause(&mut backoff).await;
                        }
                    }
                    Err(e) => {
                        if !self.stopped() {
                            tracing::warn!(error = %e, "read failed; retrying");
                            self.pause(&mut backoff).await;
                        }
                    }
                }
            }
            self.reading.store(false, Ordering::Release);
            self.finish(tasks).await;
        }
        .instrument(span)
        .await
    }

    async fn pause(&mut self, backoff: &mut Duration) {
        tokio::select! {
            () = tokio::time::sleep(*backoff) => {}
            _ = self.stop.changed() => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }

    async fn read(&self, count: usize) -> Result<Vec<RawEntry>> {
        let block_ms = self.shared.opts.get_block_timeout().as_millis() as u64;
        let reply: Value = self
            .reader
            .xreadgroup(
                self.shared.group(),
                &*self.shared.consumer,
                Some(count as u64),
                Some(block_ms),
                false,
                self.shared.key.as_str(),
                ">",
            )
            .await?;
        Ok(redis::parse_read_reply(reply))
    }

    fn spawn_handler(
        &self,
        tasks: &mut JoinSet<()>,
        entry: RawEntry,
        permit: OwnedSemaphorePermit,
    ) {
        if let Ok(mut set) = self.shared.inflight.lock() {
            set.insert(entry.id.clone());
        }
        let shared = self.shared.clone();
        tasks.spawn(async move {
            let id = entry.id.clone();
            process(&shared, entry, 1).await;
            shared.settle(&id);
            drop(permit);
        });
    }

    /// Shutdown: wait for running handlers (bounded by the grace period), flush acks, release
    /// unfinished entries and remove the consumer if it owns nothing.
    async fn finish(mut self, mut tasks: JoinSet<()>) {
        let drained = tokio::time::timeout(self.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "grace period over; abandoning running handlers"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let unfinished: Vec<String> = self
            .shared
            .inflight
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if let Ok(mut a) = self.shared.acks.lock() {
            a.take();
        }
        let _ = (&mut self.acker).await;
        if !unfinished.is_empty() {
            self.release(&unfinished).await;
        }
        self.delete_consumer_if_idle().await;
        let _ = self.reader.quit().await;
    }

    /// Makes entries this consumer will not finish reclaimable at once: their idle time is
    /// set far beyond any visibility timeout, without counting a delivery.
    async fn release(&self, ids: &[String]) {
        let s = &self.shared;
        let r: std::result::Result<Value, _> = s
            .client
            .xclaim(
                s.key.as_str(),
                s.group(),
                &*s.consumer,
                0,
                ids.to_vec(),
                Some(u64::from(u32::MAX)),
                None,
                None,
                false,
                true,
            )
            .await;
        match r {
            Ok(_) => tracing::info!(count = ids.len(), "released unfinished entries for reclaim"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release unfinished entries; they will be reclaimed after the visibility timeout")
            }
        }
    }

    async fn delete_consumer_if_idle(&self) {
        let s = &self.shared;
        let r = redis::eval(
            redis::delete_idle_consumer_script(),
            &s.client,
            vec![s.key.clone()],
            vec![Value::from(s.group()), Value::from(&*s.consumer)],
        )
        .await;
        match r {
            Ok(Value::Integer(1)) => tracing::debug!("removed consumer from its group"),
            Ok(_) => {
                tracing::info!("consumer still owns pending entries; left in its group for reclaim")
            }
            Err(e) => tracing::warn!(error = %e, "cannot remove consumer from its group"),
        }
    }
}

/// Runs one entry and settles it: ack on success, dead-letter on decode failure or rejection,
/// leave pending on failure (redelivered after the visibility timeout).
async fn process(s: &Shared, entry: RawEntry, attempt: u32) {
    let Some(fields) = entry.fields else {
        tracing::warn!(entry_id = %entry.id, "entry was deleted while pending (trimmed or XDEL); acknowledging it away");
        s.ack(entry.id);
        return;
    };
    let env = match envelope::decode(&fields) {
        Ok(env) => env,
        Err(e) => {
            dead_letter(s, &entry.id, attempt, "decode", &e.to_string()).await;
            return;
        }
    };
    if env.event_type != s.sub.event_name() {
        tracing::debug!(entry_id = %entry.id, event_type = %env.event_type, "not this subscriber's event type; skipped");
        s.ack(entry.id);
        return;
    }
    let span = tracing::info_span!(
        "handle",
        stream = s.sub.stream(),
        group = s.group(),
        event_id = %env.event_id,
        entry_id = %entry.id,
        attempt
    );
    let ctx = make_context(
        env.event_id.clone(),
        env.event_type.clone(),
        entry.id.clone(),
        s.sub.stream(),
        s.group(),
        &s.consumer,
        attempt,
        env.published_at_ms,
        env.headers.clone(),
    );
    let outcome = AssertUnwindSafe(s.sub.dispatch(env, ctx))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    match outcome {
        Ok(Dispatch::Done(Ok(()))) => s.ack(entry.id),
        Ok(Dispatch::Done(Err(e))) if e.is_reject() => {
            dead_letter(s, &entry.id, attempt, "rejected", &e.to_string()).await;
        }
        Ok(Dispatch::Done(Err(e))) => {
            tracing::warn!(error = %e, "handler failed; the event will be delivered again");
        }
        Ok(Dispatch::Undecodable(e)) => {
            dead_letter(s, &entry.id, attempt, "decode", &e).await;
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            tracing::error!(panic = %msg, "handler panicked; the event will be delivered again");
        }
    }
}

/// Moves an entry to the group's dead-letter stream (atomic, fenced by ownership).
async fn dead_letter(s: &Shared, id: &str, attempt: u32, reason: &str, error: &str) {
    let mut delay = Duration::from_millis(50);
    for _ in 0..8 {
        let r = redis::eval(
            redis::dead_letter_script(),
            &s.client,
            vec![s.key.clone(), s.dlq_key.clone()],
            vec![
                Value::from(s.group()),
                Value::from(id),
                Value::from(&*s.consumer),
                Value::from(reason),
                Value::from(error),
                Value::from(attempt as i64),
            ],
        )
        .await;
        match r {
            Ok(Value::Integer(1)) => {
                tracing::warn!(
                    entry_id = id,
                    reason,
                    error,
                    "moved to the dead-letter stream"
                );
                return;
            }
            Ok(other) => {
                tracing::warn!(entry_id = id, reply = ?other, "not dead-lettered: the entry is no longer ours");
                return;
            }
            Err(e) if e.is_connection() => {
                tracing::warn!(error = %e, "dead-letter move failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, entry_id = id, "dead-letter move failed; the entry stays pending");
                return;
            }
        }
    }
    tracing::error!(
        entry_id = id,
        "dead-letter move kept failing; the entry stays pending"
    );
}
