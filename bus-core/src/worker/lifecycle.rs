//! One group's life in a worker: prepare (create the group, connect the reader, start the ackers),
//! run (handler pool, own pending entries, scanner, heartbeat, read loop) and shut down.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::acker;
use super::blocking::watch_loop;
use super::gate::SoloGate;
use super::group::{Group, GroupKeys};
use super::handlers::HandlerSet;
use super::keeper::Keeper;
use super::lease::{heartbeat_loop, release_all};
use super::pool::Pool;
use super::read::{own_pending, Reader};
use super::reclaim::{delete_consumer_if_idle, scan_loop};
use super::state::{HeldTable, Phase};
use super::{take, WorkerSettings};
use crate::conn::Conn;
use crate::error::ClientResult;
use crate::error::Result;
use crate::names::Priority;
use crate::redis;
use crate::subscriber::StartFrom;

/// A prepared group: its group exists in Redis and its reader is connected.
pub(crate) struct GroupRunner {
    group: Arc<Group>,
    reader: Client,
    reading: Arc<AtomicBool>,
    ackers: Vec<JoinHandle<()>>,
}

impl GroupRunner {
    /// Creates the group on every lane, connects the reader and starts the ackers.
    pub(crate) async fn prepare(
        conn: &Conn,
        handlers: HandlerSet,
        consumer: Arc<str>,
        settings: WorkerSettings,
        gate: SoloGate,
        keeper: Keeper,
        stop: watch::Receiver<bool>,
    ) -> Result<Self> {
        let opts = handlers.options().clone();
        let keys = GroupKeys::new(conn, handlers.stream(), opts.get_group());
        let client = conn.client.clone();
        let start = match opts.get_start_from() {
            StartFrom::Beginning => "0",
            StartFrom::NewEvents => "$",
        };
        for (p, lane) in Priority::ALL.iter().zip(&keys.lanes) {
            let legacy = keys.stream.legacy_lane_retries(*p, opts.get_group());
            if redis::adopt_renamed_key(&client, &legacy, &lane.records).await? {
                tracing::info!(from = %legacy, to = %lane.records, "moved attempt records to their new key");
            }
            if redis::ensure_group(&client, &lane.stream, opts.get_group(), start).await? {
                tracing::info!(
                    stream = handlers.stream(),
                    key = %lane.stream,
                    group = opts.get_group(),
                    start,
                    "created consumer group"
                );
            }
        }
        // A connection used only for blocking reads: a blocked connection would stall every
        // other command sent on it.
        let reader = client.clone_new();
        reader.init().await.client_err()?;
        let mut acks = Vec::with_capacity(keys.lanes.len());
        let mut ackers = Vec::with_capacity(keys.lanes.len());
        let unacked = Arc::new(acker::Unacked::default());
        let held = Arc::new(HeldTable::new(keys.lanes.len()));
        for (i, lane) in keys.lanes.iter().enumerate() {
            let (a, task) = acker::spawn(
                client.clone(),
                opts.get_group(),
                (i, lane),
                held.clone(),
                unacked.clone(),
            );
            acks.push(a);
            ackers.push(task);
        }
        let group = Group::new(
            handlers, keys, consumer, conn, settings, gate, held, acks, unacked, keeper, stop,
        );
        Ok(Self {
            group: Arc::new(group),
            reader,
            reading: Arc::new(AtomicBool::new(true)),
            ackers,
        })
    }

    pub(crate) fn stream(&self) -> &'static str {
        self.group.stream()
    }

    pub(crate) fn reader(&self) -> &Client {
        &self.reader
    }

    pub(crate) fn reading_flag(&self) -> Arc<AtomicBool> {
        self.reading.clone()
    }

    /// Releases the connections of a group that never ran.
    pub(crate) async fn close(self) {
        self.group.close_acks().await;
        for a in self.ackers {
            let _ = a.await;
        }
        let _ = self.reader.quit().await;
    }

    /// Runs the group until the stop flag is set, then shuts it down.
    pub(crate) async fn run(self) {
        let g = self.group.clone();
        let span = tracing::info_span!(
            "subscriber",
            stream = g.stream(),
            group = g.group(),
            consumer = %g.consumer
        );
        async move {
            Pool::start(&g);
            take_own_pending(&g).await;
            let scanner = tokio::spawn(scan_loop(g.clone()).in_current_span());
            let (heartbeat_stop, heartbeat_rx) = watch::channel(false);
            // Both on the keeper's thread: handlers that block cannot starve them.
            let heartbeat = g
                .keeper
                .spawn(heartbeat_loop(g.clone(), heartbeat_rx.clone()).in_current_span());
            let watch = g
                .keeper
                .spawn(watch_loop(g.clone(), heartbeat_rx).in_current_span());
            Reader::new(g.clone(), self.reader.clone(), self.reading.clone())
                .run()
                .await;
            let _ = scanner.await;
            shut_down(&g, self.ackers, heartbeat_stop, [heartbeat, watch]).await;
        }
        .instrument(span)
        .await
    }
}

/// A restarted consumer with a reused name takes over what it owned before, at once and through
/// the attempt check (a crash of the earlier process may have been caused by one of them).
async fn take_own_pending(g: &Arc<Group>) {
    for lane in g.lanes() {
        match own_pending(g, lane).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(
                    count = ids.len(),
                    "taking over this consumer's own pending entries"
                );
                for (id, _) in ids {
                    if let Some(token) = g.held.insert(lane, &id, Phase::Claimed) {
                        take::schedule(g, lane, &id, token, Duration::ZERO, false);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot list own pending entries; the scanner will reclaim them")
            }
        }
    }
}

/// Shutdown: stop retry timers and takes, wait for running handlers within the grace period
/// (leases still renewed), flush acks, release what is left, leave the group if owning nothing.
async fn shut_down(
    g: &Arc<Group>,
    ackers: Vec<JoinHandle<()>>,
    heartbeat_stop: watch::Sender<bool>,
    keeper_tasks: [JoinHandle<()>; 2],
) {
    g.held.abort_waiting();
    let all = g.opts().get_concurrency() as u32;
    let drained = tokio::time::timeout(g.settings.grace, g.slots.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("grace period over; abandoning running handlers");
        g.pool.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), g.slots.acquire_many(all)).await;
    }
    let _ = heartbeat_stop.send(true);
    for task in keeper_tasks {
        let _ = task.await;
    }
    g.close_acks().await;
    for a in ackers {
        let _ = a.await;
    }
    release_all(g).await;
    for lane in g.lanes() {
        delete_consumer_if_idle(g, lane, &g.consumer, 0).await;
    }
    g.pool.abort_all();
}
