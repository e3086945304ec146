//! Long-lived handler tasks, one per concurrency slot: a delivery is sent to an idle one instead
//! of spawning a task per entry (no task allocation per event). A task puts itself back on the
//! idle list before it releases its slot, so whoever holds a slot finds an idle task.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::attempt::{run_attempt, Delivery};
use super::group::Group;

pub(crate) struct Pool {
    idle: Mutex<Vec<usize>>,
    senders: Vec<mpsc::UnboundedSender<Delivery>>,
    /// Handed to the tasks by [`Pool::start`].
    receivers: Mutex<Vec<mpsc::UnboundedReceiver<Delivery>>>,
    /// The handler tasks and any attempt running on a task of its own (solo attempts).
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Pool {
    pub(crate) fn new(slots: usize) -> Self {
        let (senders, receivers) = (0..slots).map(|_| mpsc::unbounded_channel()).unzip();
        Pool {
            idle: Mutex::new((0..slots).rev().collect()),
            senders,
            receivers: Mutex::new(receivers),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Starts the handler tasks.
    pub(crate) fn start(g: &Arc<Group>) {
        let receivers = g
            .pool
            .receivers
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        for (i, mut rx) in receivers.into_iter().enumerate() {
            let group = g.clone();
            let task = tokio::spawn(
                async move {
                    while let Some(delivery) = rx.recv().await {
                        // The slot and the gate turn travel with the delivery; they are released
                        // after the task is back on the idle list.
                        let held = run_attempt(&group, delivery, i).await;
                        if let Ok(mut idle) = group.pool.idle.lock() {
                            idle.push(i);
                        }
                        drop(held);
                    }
                }
                .in_current_span(),
            );
            g.pool.track(task.abort_handle());
        }
    }

    fn track(&self, task: AbortHandle) {
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|t| !t.is_finished());
            t.push(task);
        }
    }

    /// Runs a delivery on an idle handler task (on a task of its own if none is idle, which
    /// cannot happen while slots and tasks match).
    pub(crate) fn run(g: &Arc<Group>, delivery: Delivery) {
        let idle = g.pool.idle.lock().ok().and_then(|mut i| i.pop());
        let delivery = match idle.and_then(|i| g.pool.senders.get(i).map(|tx| (i, tx))) {
            Some((i, tx)) => match tx.send(delivery) {
                Ok(()) => return,
                Err(mpsc::error::SendError(d)) => {
                    if let Ok(mut idle) = g.pool.idle.lock() {
                        idle.push(i);
                    }
                    d
                }
            },
            None => delivery,
        };
        Self::run_alone(g, delivery);
    }

    /// Runs a delivery on a task of its own.
    pub(crate) fn run_alone(g: &Arc<Group>, delivery: Delivery) {
        let group = g.clone();
        let task = tokio::spawn(
            async move {
                let held = run_attempt(&group, delivery, usize::MAX).await;
                drop(held);
            }
            .in_current_span(),
        );
        g.pool.track(task.abort_handle());
    }

    /// Aborts every handler task (shutdown, once the grace period is over).
    pub(crate) fn abort_all(&self) {
        if let Ok(t) = self.tasks.lock() {
            for task in t.iter() {
                task.abort();
            }
        }
    }
}
