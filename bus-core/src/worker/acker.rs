//! Batched acknowledgements: one task per subscriber collects the ids of handled entries and sends
//! them in as few `XACK`s as possible. While one `XACK` is in flight the next batch accumulates, so
//! an idle worker acks at once and a busy one acks hundreds of ids per round trip.

use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;

/// Most ids in one XACK.
const MAX_BATCH: usize = 1024;
/// How long a batch is retried on connection errors before it is given up (the entries then stay
/// pending and are delivered again after the visibility timeout: at-least-once still holds).
const RETRY_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct AckSender(mpsc::UnboundedSender<String>);

impl AckSender {
    pub(crate) fn ack(&self, id: String) {
        if self.0.send(id).is_err() {
            tracing::error!("ack channel closed; the entry will be redelivered");
        }
    }
}

/// Starts the ack task. It ends once every [`AckSender`] is dropped and all acks are flushed.
pub(crate) fn spawn(client: Client, key: String, group: String) -> (AckSender, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        while let Some(id) = rx.recv().await {
            batch.push(id);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(id) => batch.push(id),
                    Err(_) => break,
                }
            }
            flush(&client, &key, &group, &mut batch).await;
        }
    });
    (AckSender(tx), task)
}

async fn flush(client: &Client, key: &str, group: &str, batch: &mut Vec<String>) {
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        let ids: Vec<&str> = batch.iter().map(String::as_str).collect();
        match client
            .xack::<u64, _, _, _>(key, group, ids)
            .await
            .map_err(Error::from)
        {
            Ok(_) => break,
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
    batch.clear();
}
