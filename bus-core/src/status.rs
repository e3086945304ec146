//! Per-event status, results and completion.
//!
//! For subscribers with [`track_status`](crate::SubscriberOptions::track_status), each event has
//! a hash `<prefix>:{<stream>}:status:<event id>` with fields `<group>:state`, `<group>:attempts`,
//! `<group>:error`, `<group>:result` (MessagePack) and `<group>:updated_at`. Every write goes
//! through one script that also sets the TTL — the completion TTL (24 h) once every recorded group
//! is done, else at least the safety TTL (7 days) — so a record can never be left without one,
//! and that never overwrites `succeeded`, so a zombie cannot turn a success into a failure. Terminal states (`succeeded`, `dead`) are announced on the Pub/Sub
//! channel `<prefix>:{<stream>}:done:<event id>`.
//!
//! [`Bus::wait_for`] subscribes first, then reads the hash (no race with a completion in
//! between), then waits for a notification — re-reading the hash every second as well, because
//! Pub/Sub is at-most-once and a notification lost in a reconnect must not leave a waiter hanging.
//! Waiters share one Pub/Sub connection per bus; a single task owns its subscriptions (see
//! `Waiters`), and each waiter holds a reference that it gives back on drop, so cancelled
//! waiters do not leak subscriptions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How the status error of a succeeded event whose result was too large to keep ends.
pub(crate) const RESULT_NOT_STORED: &str = "; not stored";

use fred::prelude::*;
use fred::types::Value;
use serde::de::DeserializeOwned;

use crate::bus::Bus;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::redis::{self, value_bytes};
use crate::waiters::Waiters;

/// Where one group is with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Not started by this group yet (or not tracked).
    Pending,
    /// A handler is running it.
    Running,
    /// The last attempt failed; a retry is scheduled.
    Failed,
    /// Handled.
    Succeeded,
    /// Dead-lettered.
    Dead,
}

impl State {
    fn parse(s: &str) -> State {
        match s {
            "running" => State::Running,
            "failed" => State::Failed,
            "succeeded" => State::Succeeded,
            "dead" => State::Dead,
            _ => State::Pending,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Failed => "failed",
            State::Succeeded => "succeeded",
            State::Dead => "dead",
        }
    }

    /// `Succeeded` or `Dead`: nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Dead)
    }
}

/// One group's status for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The state.
    pub state: State,
    /// Attempts so far.
    pub attempts: u32,
    /// The last error, if any.
    pub error: Option<String>,
    /// When this was last written (Redis clock, Unix ms).
    pub updated_at_ms: u64,
    result: Option<Vec<u8>>,
}

impl GroupStatus {
    fn pending() -> Self {
        GroupStatus {
            state: State::Pending,
            attempts: 0,
            error: None,
            updated_at_ms: 0,
            result: None,
        }
    }

    /// The handler's returned value, decoded.
    pub fn result<R: DeserializeOwned>(&self) -> Result<Option<R>> {
        match &self.result {
            Some(b) => rmp_serde::from_slice(b)
                .map(Some)
                .map_err(|e| Error::Decode(e.to_string())),
            None => Ok(None),
        }
    }
}

/// A status write, as the worker makes them.
pub(crate) struct StatusWrite<'a> {
    pub(crate) state: State,
    pub(crate) attempts: u32,
    pub(crate) error: Option<&'a str>,
    pub(crate) result: Option<&'a [u8]>,
}

pub(crate) fn status_key(conn: &Conn, stream: &str, event_id: &str) -> String {
    conn.keys(stream).status(event_id)
}

fn channel(conn: &Conn, stream: &str, event_id: &str) -> String {
    conn.keys(stream).done_channel(event_id)
}

/// Writes one group's status (see the module docs).
pub(crate) async fn write(
    conn: &Conn,
    stream: &str,
    group: &str,
    event_id: &str,
    w: StatusWrite<'_>,
    ttl: (Duration, Duration),
) -> Result<()> {
    let terminal = w.state.is_terminal();
    redis::eval(
        redis::write_status_script(),
        &conn.client,
        vec![status_key(conn, stream, event_id)],
        vec![
            Value::from(group),
            Value::from(w.state.as_str()),
            Value::from(i64::from(w.attempts)),
            Value::from(w.error.unwrap_or("")),
            Value::Bytes(w.result.map(|r| r.to_vec()).unwrap_or_default().into()),
            Value::from(ttl.1.as_millis().max(1) as i64),
            Value::from(if terminal {
                channel(conn, stream, event_id)
            } else {
                String::new()
            }),
            Value::from(ttl.0.as_millis().max(1) as i64),
        ],
    )
    .await?;
    Ok(())
}

fn parse_status(fields: HashMap<String, Value>) -> HashMap<String, GroupStatus> {
    let mut out: HashMap<String, GroupStatus> = HashMap::new();
    for (k, v) in fields {
        let Some((group, field)) = k.rsplit_once(':') else {
            continue;
        };
        let st = out
            .entry(group.to_owned())
            .or_insert_with(GroupStatus::pending);
        match field {
            "state" => st.state = State::parse(&v.as_string().unwrap_or_default()),
            "attempts" => st.attempts = v.as_u64().unwrap_or(0) as u32,
            "error" => st.error = v.as_string(),
            "updated_at" => st.updated_at_ms = v.as_u64().unwrap_or(0),
            "result" => st.result = value_bytes(v).map(|b| b.to_vec()).filter(|b| !b.is_empty()),
            _ => {}
        }
    }
    out
}

impl Bus {
    /// Every tracked group's status for an event of type `E` (empty when nothing was recorded, or
    /// the record expired).
    pub async fn status<E: Event>(&self, event_id: &str) -> Result<HashMap<String, GroupStatus>> {
        self.event_status(E::STREAM, event_id).await
    }

    /// Every tracked group's status for an event on `stream`, by stream name (for tools).
    pub async fn event_status(
        &self,
        stream: &str,
        event_id: &str,
    ) -> Result<HashMap<String, GroupStatus>> {
        crate::names::validate_name("stream", stream)?;
        let key = status_key(&self.conn, stream, event_id);
        let fields = redis::hash_fields(&self.conn.client, &key).await?;
        Ok(parse_status(fields))
    }

    /// One group's status for an event of type `E` ([`State::Pending`] when nothing was recorded).
    pub async fn group_status<E: Event>(&self, event_id: &str, group: &str) -> Result<GroupStatus> {
        Ok(self
            .status::<E>(event_id)
            .await?
            .remove(group)
            .unwrap_or_else(GroupStatus::pending))
    }

    /// Waits until `group` has finished with an event of type `E` (succeeded or dead-lettered) and
    /// returns its status, or fails with [`Error::Timeout`]. The group must track status.
    ///
    /// Guarantees:
    /// - A completion is not missed: the waiter subscribes to the event's completion channel before
    ///   it first reads the status, and re-reads it at least every second, so a notification lost
    ///   in a reconnect delays the answer by at most a second instead of hanging.
    /// - Cancel-safe: the future may be dropped at any point (a timeout, `select!`, a client that
    ///   went away). Its subscription is released on drop like on return; when it was the last
    ///   waiter of the channel, the UNSUBSCRIBE is sent in the background.
    /// - Waiters on one event share one subscription on the bus's Pub/Sub connection. One task
    ///   applies every subscribe and unsubscribe in order, so a waiter that starts while the
    ///   previous one ends is never left unsubscribed, and once waiters come and go the server is
    ///   subscribed to exactly the channels that still have one.
    pub async fn wait_for<E: Event>(
        &self,
        event_id: &str,
        group: &str,
        timeout: Duration,
    ) -> Result<GroupStatus> {
        let deadline = Instant::now() + timeout;
        let waiters = self.waiters().await?;
        let chan = channel(&self.conn, E::STREAM, event_id);
        // Subscribe first, then read: a completion in between is not missed. The subscription is
        // held until this future completes or is dropped, whichever comes first.
        let mut rx = waiters.client.message_rx();
        let _subscription = waiters.subscribe(&chan).await?;
        loop {
            let st = self.group_status::<E>(event_id, group).await?;
            if st.state.is_terminal() {
                return Ok(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "group {group} did not finish event {event_id} within {timeout:?}"
                )));
            }
            // Woken by the announcement, or re-read every second in case it was lost.
            let wake = async {
                loop {
                    match rx.recv().await {
                        Ok(m) if &*m.channel == chan.as_str() => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(_) => std::future::pending::<()>().await,
                    }
                }
            };
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), wake).await;
        }
    }

    /// Publishes `event` and waits for `group`'s handler to return, returning its value: a
    /// request/response over the bus. The group must track status. A dead-lettered event gives
    /// [`Error::Failed`].
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize, bus_core::Event)]
    /// # #[event(stream = "quotes")]
    /// # struct QuoteRequested { sku: String }
    /// # async fn demo(bus: bus_core::Bus) -> bus_core::Result<()> {
    /// let cents: u64 = bus
    ///     .request(&QuoteRequested { sku: "A-1".into() }, "pricing", Duration::from_secs(5))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn request<E: Event, R: DeserializeOwned>(
        &self,
        event: &E,
        group: &str,
        timeout: Duration,
    ) -> Result<R> {
        let p = self.publish(event).await?;
        let st = self.wait_for::<E>(&p.event_id, group, timeout).await?;
        match st.state {
            State::Succeeded => st.result::<R>()?.ok_or_else(|| Error::ResultNotKept {
                group: group.to_owned(),
                reason: st
                    .error
                    .filter(|e| e.ends_with(RESULT_NOT_STORED))
                    .unwrap_or_else(|| "the subscriber does not keep results".to_owned()),
            }),
            _ => Err(Error::Failed {
                group: group.to_owned(),
                error: st.error.unwrap_or_default(),
            }),
        }
    }

    async fn waiters(&self) -> Result<&Waiters> {
        self.waiters
            .get_or_try_init(|| Waiters::new(&self.conn))
            .await
    }
}
