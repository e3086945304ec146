//! Batched acknowledgements: one task per lane collects the ids of handled entries and sends them
//! in as few `XACK`s as possible. While one `XACK` is in flight the next batch accumulates, so an
//! idle worker acks at once. A busy one (its last batch had at least [`BUSY`] ids) also waits up
//! to [`LINGER`] for a batch of [`FULL`] ids: a round trip alone would cut the batches to a few
//! dozen ids, and each `XACK` costs Redis about as much per call as a few hundred ids cost
//! (BENCHMARKS.md, "Where the drain time goes now").
//!
//! Entries that carried an attempt record (they were retried or reclaimed) have it deleted in the
//! same pipeline, so no record outlives its entry.
//!
//! An entry stays in the held table (state `Acking`, lease renewed by the keeper thread) until
//! its `XACK` was sent: while handlers block every runtime thread, the ack task may not run for a
//! while, and an entry nobody renews would be taken over and run again by another worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::group::LaneKeys;
use super::state::{HeldTable, Lane, Token};
use crate::redis;

/// Most ids in one XACK.
const MAX_BATCH: usize = 1024;
/// A batch this large means the worker is busy: the next one lingers.
const BUSY: usize = 32;
/// The batch size a busy acker waits for.
const FULL: usize = 256;
/// Longest a busy acker waits for more ids (the entries stay leased meanwhile).
const LINGER: Duration = Duration::from_millis(1);
/// Most acknowledgements waiting to be sent; handlers wait for room beyond that (the channel is
/// bounded so a Redis that stops answering cannot grow it without limit).
const CAPACITY: usize = 4 * MAX_BATCH;
/// How long a batch is retried on connection errors before it is given up (the entries then stay
/// pending and are delivered again after the visibility timeout: at-least-once still holds).
const RETRY_FOR: Duration = Duration::from_secs(30);

enum Msg {
    Ack(Ack),
    /// Flush what came before and end (shutdown, once no handler runs any more).
    Close,
}

/// Acknowledgements queued or in flight: an entry settled here but not yet acknowledged in Redis
/// must not look like a lost delivery to the read loop.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    count: AtomicUsize,
    changed: Notify,
}

impl Unacked {
    /// Acknowledgements queued or in flight.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until every queued acknowledgement was sent (or given up).
    pub(crate) async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            changed.await;
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AckSender {
    tx: mpsc::Sender<Msg>,
    unacked: Arc<Unacked>,
}

impl AckSender {
    /// Queues an acknowledgement; `has_record` also deletes the entry's attempt record; `token`
    /// is the entry's `Acking` state, left once the ack was sent. False when the ack task is gone.
    pub(crate) async fn ack(&self, id: String, has_record: bool, token: Option<Token>) -> bool {
        self.unacked.count.fetch_add(1, Ordering::AcqRel);
        let ack = Ack {
            id,
            has_record,
            token,
        };
        if self.tx.send(Msg::Ack(ack)).await.is_err() {
            self.unacked.count.fetch_sub(1, Ordering::AcqRel);
            self.unacked.changed.notify_waiters();
            tracing::error!("ack channel closed; the entry will be redelivered");
            return false;
        }
        true
    }

    /// Asks the acker to flush what was queued and end.
    pub(crate) async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
    }
}

/// One queued acknowledgement.
struct Ack {
    id: String,
    /// Also delete the entry's attempt record.
    has_record: bool,
    /// Its `Acking` state in the held table, left once the ack was sent.
    token: Option<Token>,
}

/// Starts the ack task for lane `lane` (keys `keys`) of `group`. It ends at [`AckSender::close`]
/// (or once every sender is dropped), after flushing what was queued before.
pub(crate) fn spawn(
    client: Client,
    group: &str,
    (lane, keys): (Lane, &LaneKeys),
    held: Arc<HeldTable>,
    unacked: Arc<Unacked>,
) -> (AckSender, JoinHandle<()>) {
    let (key, records, group) = (keys.stream.clone(), keys.records.clone(), group.to_owned());
    let (tx, mut rx) = mpsc::channel::<Msg>(CAPACITY);
    let sender = AckSender {
        tx,
        unacked: unacked.clone(),
    };
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        let mut open = true;
        let mut busy = false;
        while open {
            match rx.recv().await {
                Some(Msg::Ack(ack)) => batch.push(ack),
                Some(Msg::Close) | None => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Ack(ack)) => batch.push(ack),
                    Ok(Msg::Close) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if busy && open {
                let deadline = tokio::time::Instant::now() + LINGER;
                while batch.len() < FULL {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(Msg::Ack(ack))) => batch.push(ack),
                        Ok(Some(Msg::Close) | None) => {
                            open = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            busy = batch.len() >= BUSY;
            flush(&client, &key, &records, &group, &batch).await;
            // Sent (or given up: then the entry is reclaimed and runs again after the visibility
            // timeout, so it must not be renewed any more either).
            for a in &batch {
                if let Some(token) = a.token {
                    held.remove(lane, &a.id, token);
                }
            }
            unacked.count.fetch_sub(batch.len(), Ordering::AcqRel);
            unacked.changed.notify_waiters();
            batch.clear();
        }
    });
    (sender, task)
}

async fn flush(client: &Client, key: &str, records: &str, group: &str, batch: &[Ack]) {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let ids: Vec<&str> = batch.iter().map(|a| a.id.as_str()).collect();
    let with_records: Vec<&str> = batch
        .iter()
        .filter(|a| a.has_record)
        .map(|a| a.id.as_str())
        .collect();
    loop {
        match redis::ack(client, key, group, &ids, records, &with_records).await {
            Ok(()) => break,
            Err(e) if e.is_connection() && started.elapsed() < RETRY_FOR => {
                tracing::warn!(error = %e, pending = batch.len(), "XACK failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    dropped = batch.len(),
                    "giving up on acknowledgements; these entries will be delivered again"
                );
                break;
            }
        }
    }
}
