//! Safe stream trimming: trim each stream to the oldest entry some group still needs, in bounded
//! steps.
//!
//! Per group, the oldest entry it needs is the smaller of the entry after its last-delivered id
//! (undelivered entries) and its oldest pending id (delivered, not acknowledged). The stream is
//! trimmed to the smallest of those over all groups (the *cut*), never below what the
//! [`Retention`] keeps. A stream without groups keeps entries younger than
//! [`Retention::without_groups`] (7 days by default), so a stream nobody subscribes to cannot
//! grow forever.
//!
//! Redis must never be blocked by trimming, however long the backlog. Each step is one script
//! whose work is bounded: it reads the groups' positions (`XINFO GROUPS`, one `XPENDING` summary
//! per group), then removes whole stream nodes below the cut (`XTRIM MINID ~ … LIMIT`, at most
//! [`TRIM_BATCH`] entries), or, once only the node straddling the cut is left, the entries of that
//! node below the cut (`XRANGE … COUNT 100`, then an exact `XTRIM MAXLEN`). The minimum count is
//! kept by never removing more than `XLEN - min_count` entries in a step, so nothing walks the
//! backlog to find the cut point. [`Bus::trim`] repeats steps until one removes nothing.

use std::time::Duration;

use fred::types::Value;
use tokio::sync::watch;

use crate::bus::Bus;
use crate::conn::Conn;
use crate::error::Result;
use crate::redis;

/// What to keep beyond what the groups still need.
///
/// ```
/// use std::time::Duration;
/// let keep = bus_core::Retention::new()
///     .min_age(Duration::from_secs(3600))
///     .min_count(1_000)
///     .without_groups(Some(Duration::from_secs(3 * 24 * 3600)));
/// assert_eq!(keep.min_count, 1_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Keep entries younger than this (by their id's time, Redis clock). Default 0.
    pub min_age: Duration,
    /// Keep at least this many newest entries. Default 0.
    pub min_count: u64,
    /// For a stream (lane) that has no consumer group: remove entries older than this; `None`
    /// keeps them all. Default 7 days. `min_age` and `min_count` apply as well.
    pub without_groups: Option<Duration>,
}

impl Retention {
    /// The default: keep what the groups need, and a week of a stream without groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps entries younger than `age` as well.
    #[must_use]
    pub fn min_age(mut self, age: Duration) -> Self {
        self.min_age = age;
        self
    }

    /// Keeps at least the `n` newest entries as well.
    #[must_use]
    pub fn min_count(mut self, n: u64) -> Self {
        self.min_count = n;
        self
    }

    /// How long a stream without groups keeps its entries (`None`: for ever).
    #[must_use]
    pub fn without_groups(mut self, max_age: Option<Duration>) -> Self {
        self.without_groups = max_age;
        self
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            min_age: Duration::ZERO,
            min_count: 0,
            without_groups: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// Most entries one trim step removes as whole stream nodes.
pub const TRIM_BATCH: u64 = 10_000;

/// Most entries one trim step reads to cut inside the node that straddles the cut point.
const EXACT_STEP: u64 = 100;

impl Bus {
    /// Trims a stream safely, now: removes only entries every group has delivered and
    /// acknowledged, keeping what `retention` asks for. Returns how many entries were removed.
    /// Workers do this periodically on their own (see [`Worker::trim_every`](crate::Worker::trim_every)).
    /// Each priority lane is trimmed on its own (retention applies per lane).
    ///
    /// Works in bounded steps (at most [`TRIM_BATCH`] entries each, none of which walks the
    /// backlog), so other clients are served between steps however long the stream is.
    ///
    /// ```no_run
    /// # async fn demo(bus: bus_core::Bus) -> bus_core::Result<()> {
    /// use std::time::Duration;
    /// let keep = bus_core::Retention::new().min_count(1_000);
    /// let removed = bus.trim("orders", keep).await?;
    /// println!("removed {removed} acknowledged entries");
    /// # Ok(()) }
    /// ```
    pub async fn trim(&self, stream: &str, retention: Retention) -> Result<u64> {
        trim(&self.conn, stream, retention).await
    }

    /// Trims every stream under the bus's prefix (see [`Bus::trim`]), including streams no
    /// worker subscribes to, which only [`Retention::without_groups`] bounds. Returns how many
    /// entries were removed per stream that lost any.
    pub async fn trim_all(&self, retention: Retention) -> Result<Vec<(String, u64)>> {
        trim_all(&self.conn, retention).await
    }
}

/// See [`Bus::trim`].
pub(crate) async fn trim(conn: &Conn, stream: &str, retention: Retention) -> Result<u64> {
    crate::names::validate_name("stream", stream)?;
    let keys = conn.keys(stream);
    let without_groups = retention
        .without_groups
        .map_or(-1, |d| d.as_millis().min(i64::MAX as u128) as i64);
    let mut removed = 0;
    for p in crate::Priority::ALL {
        loop {
            let r = redis::eval(
                redis::trim_step_script(),
                &conn.client,
                vec![keys.lane(p)],
                vec![
                    Value::from(retention.min_age.as_millis().min(i64::MAX as u128) as i64),
                    Value::from(retention.min_count.min(i64::MAX as u64) as i64),
                    Value::from(without_groups),
                    Value::from(TRIM_BATCH as i64),
                    Value::from(EXACT_STEP as i64),
                ],
            )
            .await?;
            match r.as_u64() {
                Some(n) if n > 0 => removed += n,
                _ => break,
            }
        }
    }
    Ok(removed)
}

/// See [`Bus::trim_all`].
pub(crate) async fn trim_all(conn: &Conn, retention: Retention) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for stream in crate::inspect::streams(conn).await? {
        let n = trim(conn, &stream, retention).await?;
        if n > 0 {
            out.push((stream, n));
        }
    }
    Ok(out)
}

/// Runs `step` every `interval` until `stop`.
async fn every<F, Fut>(interval: Duration, mut stop: watch::Receiver<bool>, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        step().await;
    }
}

/// Trims one stream every `interval` until `stop`.
pub(crate) async fn trim_loop(
    conn: Conn,
    stream: &'static str,
    interval: Duration,
    retention: Retention,
    stop: watch::Receiver<bool>,
) {
    every(interval, stop, || async {
        match trim(&conn, stream, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(stream, removed = n, "trimmed acknowledged entries"),
            Err(e) => tracing::warn!(stream, error = %e, "trimming failed"),
        }
    })
    .await
}

/// Trims every stream under the prefix every `interval` until `stop`.
pub(crate) async fn trim_all_loop(
    conn: Conn,
    interval: Duration,
    retention: Retention,
    stop: watch::Receiver<bool>,
) {
    every(interval, stop, || async {
        match trim_all(&conn, retention).await {
            Ok(trimmed) => {
                for (stream, n) in trimmed {
                    tracing::debug!(stream, removed = n, "trimmed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "trimming every stream failed"),
        }
    })
    .await
}
