//! Batched acknowledgements: one task per lane collects the ids of handled entries and sends them
//! in as few `XACK`s as possible. While one `XACK` is in flight the next batch accumulates, so an
//! idle worker acks at once and a busy one acks hundreds of ids per round trip.
//!
//! Entries that carried an attempt record (they were retried or reclaimed) have it deleted in the
//! same pipeline, so no record outlives its entry.
//!
//! The ack tasks run on the lease keeper's thread, over its connection: a handled entry is
//! acknowledged at once even while other handlers block every runtime thread (until its ack
//! lands, nothing renews its lease, and another worker would run it again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::keeper::Keeper;
use crate::redis;

/// Most ids in one XACK.
const MAX_BATCH: usize = 1024;
/// Most acknowledgements waiting to be sent; handlers wait for room beyond that (the channel is
/// bounded so a Redis that stops answering cannot grow it without limit).
const CAPACITY: usize = 4 * MAX_BATCH;
/// How long a batch is retried on connection errors before it is given up (the entries then stay
/// pending and are delivered again after the visibility timeout: at-least-once still holds).
const RETRY_FOR: Duration = Duration::from_secs(30);

enum Msg {
    Ack {
        id: String,
        has_record: bool,
    },
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
    /// Queues an acknowledgement; `has_record` also deletes the entry's attempt record.
    pub(crate) async fn ack(&self, id: String, has_record: bool) {
        self.unacked.count.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(Msg::Ack { id, has_record }).await.is_err() {
            self.unacked.count.fetch_sub(1, Ordering::AcqRel);
            self.unacked.changed.notify_waiters();
            tracing::error!("ack channel closed; the entry will be redelivered");
        }
    }

    /// Asks the acker to flush what was queued and end.
    pub(crate) async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
    }
}

struct Ack {
    id: String,
    has_record: bool,
}

/// Starts the ack task for one lane on the keeper's thread. It ends at [`AckSender::close`] (or
/// once every sender is dropped), after flushing what was queued before.
pub(crate) fn spawn(
    keeper: &Keeper,
    key: String,
    records: String,
    group: String,
    unacked: Arc<Unacked>,
) -> (AckSender, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Msg>(CAPACITY);
    let sender = AckSender {
        tx,
        unacked: unacked.clone(),
    };
    let client = keeper.client().clone();
    let task = keeper.spawn(async move {
        let mut batch = Vec::with_capacity(64);
        let mut open = true;
        while open {
            match rx.recv().await {
                Some(Msg::Ack { id, has_record }) => batch.push(Ack { id, has_record }),
                Some(Msg::Close) | None => break,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Ack { id, has_record }) => batch.push(Ack { id, has_record }),
                    Ok(Msg::Close) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            flush(&client, &key, &records, &group, &batch).await;
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
