//! Completion waiters: one shared Pub/Sub connection per bus, whose subscriptions a single task
//! owns. Each waiter holds a reference to its channel that it gives back on drop, so cancelled
//! waiters do not leak subscriptions.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::conn::Conn;
use crate::error::ClientResult;
use crate::error::{Error, Result};

/// Most subscription requests applied in one pass of the subscription task.
const MAX_BATCH: usize = 1024;

/// How soon the subscription task tries again after a SUBSCRIBE or UNSUBSCRIBE failed.
const RETRY_FAILED: Duration = Duration::from_secs(1);

/// A request to the subscription task.
enum Op {
    /// Take one reference to a channel; answered once the SUBSCRIBE (if one was needed) is sent.
    Acquire(String, oneshot::Sender<Result<()>>),
    /// Give one reference back.
    Release(String),
}

/// Shared Pub/Sub connection for waiters, with per-channel reference counts.
///
/// One task owns the counts and is the only one to send SUBSCRIBE and UNSUBSCRIBE, applying
/// requests in the order they were made. So the UNSUBSCRIBE of a channel's last waiter can never
/// land after the SUBSCRIBE of the next one, and once requests settle the server is subscribed to
/// exactly the channels that have waiters.
pub(crate) struct Waiters {
    /// The Pub/Sub connection; waiters read its message stream.
    pub(crate) client: Client,
    ops: mpsc::UnboundedSender<Op>,
}

/// One waiter's reference to a channel. Dropping it gives the reference back — also when the
/// `wait_for` future holding it is dropped mid-wait (a timeout, `select!`, a closed request), so
/// a cancelled waiter does not leak its subscription. Sending on an unbounded channel never blocks
/// and needs no runtime, so this works from any `Drop`.
pub(crate) struct Subscription {
    ops: mpsc::UnboundedSender<Op>,
    channel: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Fails only when the task has stopped, and then there is no subscription to release.
        let _ = self
            .ops
            .send(Op::Release(std::mem::take(&mut self.channel)));
    }
}

impl Waiters {
    pub(crate) async fn new(conn: &Conn) -> Result<Waiters> {
        let client = conn.client.clone_new();
        client.init().await.client_err()?;
        let (ops, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_subscriptions(client.clone(), rx));
        Ok(Waiters { client, ops })
    }

    /// Takes a reference to `channel`, subscribing when it is the first one.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let stopped = || Error::Internal("the waiters' subscription task has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Acquire(channel.to_owned(), tx))
            .map_err(|_| stopped())?;
        // The reference is queued: from here on it is given back on drop, even if this future is
        // dropped before the answer arrives.
        let sub = Subscription {
            ops: self.ops.clone(),
            channel: channel.to_owned(),
        };
        rx.await.map_err(|_| stopped())??;
        Ok(sub)
    }
}

/// The subscription task: applies [`Op`]s in order, a batch at a time, and sends only the net
/// changes — one SUBSCRIBE and one UNSUBSCRIBE per batch at most. Ends when the [`Waiters`] and
/// every [`Subscription`] are gone, closing the connection.
async fn run_subscriptions(client: Client, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut refs: HashMap<String, usize> = HashMap::new();
    // What the server has, as far as we know.
    let mut subscribed: HashSet<String> = HashSet::new();
    // Channels whose last command failed: the server's state is unknown, so the command is sent
    // again whatever `subscribed` says.
    let mut unsure: HashSet<String> = HashSet::new();
    loop {
        let mut batch = Vec::new();
        if unsure.is_empty() {
            match ops.recv().await {
                Some(op) => batch.push(op),
                None => break,
            }
        } else {
            match tokio::time::timeout(RETRY_FAILED, ops.recv()).await {
                Ok(Some(op)) => batch.push(op),
                Ok(None) => break,
                Err(_) => {} // only the retry
            }
        }
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }

        let mut touched: HashSet<String> = unsure.clone();
        let mut acks = Vec::new();
        for op in batch {
            match op {
                Op::Acquire(channel, ack) => {
                    *refs.entry(channel.clone()).or_insert(0) += 1;
                    touched.insert(channel.clone());
                    acks.push((channel, ack));
                }
                Op::Release(channel) => {
                    if let Some(n) = refs.get_mut(&channel) {
                        *n -= 1;
                        if *n == 0 {
                            refs.remove(&channel);
                        }
                    }
                    touched.insert(channel);
                }
            }
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for channel in touched {
            let wanted = refs.contains_key(&channel);
            if unsure.contains(&channel) || wanted != subscribed.contains(&channel) {
                if wanted {
                    add.push(channel);
                } else {
                    remove.push(channel);
                }
            }
        }

        if !remove.is_empty() {
            for c in &remove {
                subscribed.remove(c);
            }
            match client.unsubscribe(remove.clone()).await {
                Ok(()) => {
                    for c in &remove {
                        unsure.remove(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        channels = remove.len(),
                        "waiters: UNSUBSCRIBE failed; will try again"
                    );
                    unsure.extend(remove);
                }
            }
        }
        let mut failed: Option<(HashSet<String>, fred::error::Error)> = None;
        if !add.is_empty() {
            match client.subscribe(add.clone()).await {
                Ok(()) => {
                    for c in add {
                        unsure.remove(&c);
                        subscribed.insert(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        channels = add.len(),
                        "waiters: SUBSCRIBE failed; its waiters get the error"
                    );
                    unsure.extend(add.iter().cloned());
                    failed = Some((add.into_iter().collect(), e));
                }
            }
        }
        for (channel, ack) in acks {
            let answer = match &failed {
                Some((channels, e)) if channels.contains(&channel) => Err(Error::client(e.clone())),
                _ => Ok(()),
            };
            // The waiter may be gone already; its Release is queued behind this.
            let _ = ack.send(answer);
        }
    }
    let _ = client.quit().await;
}
