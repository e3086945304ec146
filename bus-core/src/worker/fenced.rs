//! The fenced per-entry operations (take, retry, dead-letter, renew, release) with typed replies.
//! Each is one script that first checks this consumer still owns the entry, so a worker that lost
//! an entry to another one can never settle it; each is safe to send twice (a reply lost with its
//! connection makes the client send it again).

use std::time::Duration;

use fred::types::Value;

use super::group::Group;
use super::outcome::Reason;
use super::state::Lane;
use crate::error::Result;
use crate::redis;
pub(crate) use crate::redis::TakeReply as Take;

/// Most ids in one lease-renewal or release script call.
pub(crate) const SCRIPT_CHUNK: usize = 200;

/// What a fenced retry or dead-letter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fenced {
    Done,
    /// Another consumer owns the entry, nobody has it pending, or a newer attempt owns the outcome.
    NotOurs,
    /// Deleted from the stream while pending; acknowledged away.
    Deleted,
}

fn fenced(code: i64) -> Fenced {
    match code {
        -4 => Fenced::Deleted,
        c if c < 0 => Fenced::NotOurs,
        _ => Fenced::Done,
    }
}

/// The record written for an entry released before it started (it was never an attempt).
pub(crate) fn released_record() -> String {
    "2|l|0||0|".to_owned()
}

/// The record written for an entry whose handler was abandoned at shutdown: a failed attempt,
/// retried at once by whoever takes it next.
pub(crate) fn abandoned_record(attempt: u32) -> String {
    format!("2|r|{attempt}||0|abandoned: the worker shut down before the handler finished")
}

impl Group {
    /// KEYS of the take and dead-letter scripts: the lane's stream, the dead-letter stream, the
    /// records, and the marker a settled entry leaves for a re-sent script.
    fn entry_keys(&self, lane: Lane, id: &str) -> Vec<String> {
        let l = self.lane(lane);
        vec![
            l.stream.clone(),
            self.keys.dead_letters.clone(),
            l.records.clone(),
            self.keys.stream.settled_marker(self.group(), id),
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

    /// Runs a script, retrying on connection errors (bounded), so a short outage does not turn
    /// into a lost outcome; the entry stays pending either way.
    async fn eval_retrying(
        &self,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value> {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            match redis::eval(script, &self.client, keys.clone(), args.clone()).await {
                Err(e) if e.is_connection() && tries < 8 && !self.stopped() => {
                    tries += 1;
                    tracing::warn!(error = %e, "script failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                r => return r,
            }
        }
    }

    /// Takes an entry for a new attempt (see `redis/scripts/take.lua`).
    pub(crate) async fn take(
        &self,
        lane: Lane,
        id: &str,
        token: &str,
        solo: bool,
        fresh: bool,
    ) -> Result<Take> {
        let flag = |b: bool| Value::from(if b { "1" } else { "0" });
        let reply = self
            .eval_retrying(
                redis::take_script(),
                self.entry_keys(lane, id),
                self.entry_args(
                    id,
                    [
                        Value::from(i64::from(self.opts().get_max_attempts())),
                        Value::from(token),
                        flag(solo),
                        flag(fresh),
                        Value::from(self.opts().get_max_dead_letters() as i64),
                    ],
                ),
            )
            .await?;
        redis::parse_take_reply(reply)
    }

    /// Records a retry of attempt `attempt` (delivery `delivery`) due after `delay`.
    pub(crate) async fn schedule_retry(
        &self,
        lane: Lane,
        id: &str,
        delivery: u32,
        attempt: u32,
        delay: Duration,
        error: &str,
    ) -> Result<Fenced> {
        let l = self.lane(lane);
        let r = self
            .eval_retrying(
                redis::retry_script(),
                vec![l.stream.clone(), l.records.clone()],
                self.entry_args(
                    id,
                    [
                        Value::from(i64::from(delivery)),
                        Value::from(delay.as_millis() as i64),
                        Value::from(error),
                        Value::from(i64::from(attempt)),
                    ],
                ),
            )
            .await?;
        Ok(fenced(r.as_i64().unwrap_or(-9)))
    }

    /// Moves an entry to the dead-letter stream; `delivery` fences it (`None`: any delivery).
    pub(crate) async fn dead_letter(
        &self,
        lane: Lane,
        id: &str,
        delivery: Option<u32>,
        attempts: u32,
        reason: Reason,
        error: &str,
    ) -> Result<Fenced> {
        let r = self
            .eval_retrying(
                redis::dead_letter_script(),
                self.entry_keys(lane, id),
                self.entry_args(
                    id,
                    [
                        Value::from(reason.as_str()),
                        Value::from(error),
                        delivery.map_or(Value::from(""), |d| Value::from(i64::from(d))),
                        Value::from(i64::from(attempts)),
                        Value::from(self.opts().get_max_dead_letters() as i64),
                    ],
                ),
            )
            .await?;
        Ok(fenced(r.as_i64().unwrap_or(-9)))
    }

    /// Renews the leases of `ids` over `client` (the lease keeper's); returns `(lost, deleted)`.
    pub(crate) async fn renew(
        &self,
        client: &fred::prelude::Client,
        lane: Lane,
        ids: &[String],
    ) -> Result<(Vec<String>, Vec<String>)> {
        let l = self.lane(lane);
        let mut args = vec![Value::from(self.group()), Value::from(&*self.consumer)];
        args.extend(ids.iter().map(|id| Value::from(id.as_str())));
        let reply = redis::eval(
            redis::renew_script(),
            client,
            vec![l.stream.clone(), l.records.clone()],
            args,
        )
        .await?;
        Ok(redis::parse_renew_reply(reply))
    }

    /// Makes entries reclaimable at once, writing each one's record (`""` = keep). Returns how
    /// many were released.
    pub(crate) async fn release(&self, lane: Lane, entries: &[(String, String)]) -> Result<i64> {
        let l = self.lane(lane);
        let mut args = vec![Value::from(self.group()), Value::from(&*self.consumer)];
        for (id, record) in entries {
            args.push(Value::from(id.as_str()));
            args.push(Value::from(record.as_str()));
        }
        let r = redis::eval(
            redis::release_script(),
            &self.client,
            vec![l.stream.clone(), l.records.clone()],
            args,
        )
        .await?;
        Ok(r.as_i64().unwrap_or(0))
    }
}
