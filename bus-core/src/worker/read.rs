//! The read loop: new entries through `XREADGROUP … >` on a connection used only for reading,
//! never more than there are free slots (plus the read-ahead allowance) and room in the held
//! table.
//!
//! A read whose reply is lost (the connection broke, or Redis stalled past the client's timeout)
//! may still have delivered entries to this consumer in Redis. Such reads are never re-sent by the
//! client, and after the next read answers on the same connection (so the lost one is over) the
//! loop takes this consumer's unheld pending entries as never started: their first attempt is not
//! burnt.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;

use super::attempt::{Delivery, Slot};
use super::group::{sleep_unless_stopped, Group};
use super::pool::Pool;
use super::state::{Lane, Phase, Token};
use super::take;
use crate::envelope::RawEntry;
use crate::error::Result;
use crate::redis;

/// Most entries asked for in one read.
const MAX_READ: usize = 256;
/// Most yields the read loop spends waiting for fast handlers to free more slots before a read.
const COALESCE_YIELDS: usize = 16;

pub(crate) struct Reader {
    g: Arc<Group>,
    client: Client,
    /// Each read's client-side timeout: the block time plus the command timeout.
    read_options: Options,
    /// Cleared once the loop has stopped reading (shutdown interrupts blocked reads until then).
    reading: Arc<AtomicBool>,
    /// Read the highest non-empty lane only (see [`Reader::read`]).
    strict: bool,
    /// A read failed: some entries may have been delivered to nobody.
    orphans_suspected: bool,
}

impl Reader {
    pub(crate) fn new(g: Arc<Group>, client: Client, reading: Arc<AtomicBool>) -> Self {
        let read_options = Options {
            timeout: Some(g.opts().get_block_timeout() + g.conn.command_timeout),
            // Never re-sent after a reconnect: a second read would deliver more entries while the
            // first one's may be lost; a failed read is handled below instead.
            max_attempts: Some(1),
            ..Options::default()
        };
        Reader {
            g,
            client,
            read_options,
            reading,
            strict: false,
            orphans_suspected: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let g = self.g.clone();
        let concurrency = g.opts().get_concurrency();
        let mut stop = g.stop.clone();
        let mut backoff = Duration::from_millis(100);
        // Entries read and held, waiting for a slot, in the order read.
        let mut queue = VecDeque::new();
        while !g.stopped() {
            let ahead = g.ahead();
            // Read again once the queue is down to half the read-ahead (with none, once it is
            // empty): the read's round trip then overlaps the queued entries' work.
            if queue.len() > ahead / 2 || g.room() == 0 {
                if queue.is_empty() {
                    // Room in the held table: failed entries waiting for their retries count,
                    // so a downstream outage leaves the backlog in the stream instead of in this
                    // process.
                    tokio::select! {
                        () = g.held.wait_for_room(|| g.room() > 0) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                } else if !start_next(&g, &mut queue, &mut stop).await {
                    break;
                }
                continue;
            }
            let free = if queue.is_empty() {
                // Back-pressure: read only as many entries as there are free slots (plus the
                // read-ahead). The slots are not held during the blocking read, so retries and
                // reclaimed entries can use them meanwhile; each entry read then waits for its
                // slot.
                let first = tokio::select! {
                    p = g.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = stop.wait_for(|s| *s) => break,
                };
                let free = coalesce(&g, concurrency).await;
                drop(first);
                free
            } else {
                g.slots.available_permits()
            };
            let want = (1 + free + ahead)
                .saturating_sub(queue.len())
                .min(MAX_READ.max(concurrency))
                .min(g.room().max(1));
            // While a suspect waits to run alone, what is read would only wait behind it.
            tokio::select! {
                () = g.gate.wait_open() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if g.stopped() {
                break;
            }
            // Queued entries keep starting while the read is out. The read itself is never
            // dropped: a reply dropped unread would leave what it delivered pending here and held
            // by nobody, so not released at shutdown. Once stopping, the loop just waits for it
            // (shutdown interrupts a blocked read) and holds what it brought.
            let read = {
                let read = self.read(want);
                tokio::pin!(read);
                let mut starting = true;
                loop {
                    tokio::select! {
                        biased;
                        r = &mut read => break r,
                        started = start_next(&g, &mut queue, &mut stop),
                            if starting && !queue.is_empty() => starting = started,
                    }
                }
            };
            match read {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    self.hold(entries, &mut queue).await;
                }
                Err(e) if e.is_nogroup() => {
                    tracing::error!(
                        error = %e,
                        "stream or consumer group vanished (Redis restarted without persistence, \
                         or the key was deleted); re-creating the group from the start of the stream"
                    );
                    g.metrics.group_recreated.increment(1);
                    for lane in g.lanes() {
                        let key = &g.lane(lane).stream;
                        if let Err(e) = redis::ensure_group(&g.client, key, g.group(), "0").await {
                            tracing::warn!(error = %e, "cannot re-create the consumer group");
                            pause(&mut stop, &mut backoff).await;
                            break;
                        }
                    }
                }
                Err(e) => {
                    if !g.stopped() {
                        // The reply may be lost with entries delivered in Redis.
                        self.orphans_suspected = true;
                        tracing::warn!(error = %e, "read failed; retrying");
                        pause(&mut stop, &mut backoff).await;
                    }
                }
            }
            // Start what the free slots can take before deciding on the next read.
            while !queue.is_empty() && g.slots.available_permits() > 0 {
                if !start_next(&g, &mut queue, &mut stop).await {
                    break;
                }
            }
        }
        self.reading.store(false, Ordering::Release);
        let _ = self.client.quit().await;
    }

    /// Holds the entries read (lease-renewed from now on, even while waiting for a slot) and
    /// queues them to start. Shutdown does not wait for a slot behind a hung handler: entries not
    /// started stay held and are released for immediate reclaim.
    async fn hold(&mut self, entries: Vec<(Lane, RawEntry)>, queue: &mut VecDeque<Queued>) {
        let g = &self.g;
        queue.extend(entries.into_iter().filter_map(|(lane, e)| {
            let token = g.held.insert(lane, &e.id, Phase::Queued)?;
            Some((lane, e, token))
        }));
        if self.orphans_suspected {
            // This read answered, so the one that failed is over on this connection.
            self.orphans_suspected = false;
            take_orphans(g).await;
        }
    }

    /// Reads up to `count` new entries, higher priority lanes first.
    ///
    /// Usually one plain non-blocking `XREADGROUP` over all lanes: when only one lane has new
    /// entries (the common case) that is exact. When several have, that read may return up to
    /// `count` from each; they run highest lane first, and the following reads switch to a
    /// script that reads only the highest non-empty lane (strict priority) until a read comes
    /// back short. When nothing is waiting, one blocking read on all lanes waits for the next.
    async fn read(&mut self, count: usize) -> Result<Vec<(Lane, RawEntry)>> {
        let g = self.g.clone();
        let keys: Vec<String> = g.keys.lanes.iter().map(|l| l.stream.clone()).collect();
        let reader = self.client.with_options(&self.read_options);
        let sent = Instant::now();
        let reply: Value = if self.strict {
            redis::eval(
                redis::lane_read_script(),
                &self.client,
                keys.clone(),
                vec![
                    Value::from(g.group()),
                    Value::from(&*g.consumer),
                    Value::from(count as i64),
                ],
            )
            .await?
        } else {
            redis::read_new(&reader, keys.clone(), g.group(), &g.consumer, count, None).await?
        };
        let mut entries = self.by_lane(reply);
        let bytes = entries.iter().map(|(_, e)| e.size()).sum();
        g.pace.read(sent.elapsed(), entries.len(), bytes);
        let lanes_hit = entries
            .iter()
            .fold(0u8, |mask, (l, _)| mask | (1 << l))
            .count_ones();
        self.strict = if self.strict {
            entries.len() >= count
        } else {
            lanes_hit > 1
        };
        if entries.is_empty() && !g.stopped() {
            let block_ms = g.opts().get_block_timeout().as_millis() as u64;
            let reply =
                redis::read_new(&reader, keys, g.group(), &g.consumer, count, Some(block_ms))
                    .await?;
            entries = self.by_lane(reply);
        }
        Ok(entries)
    }

    fn by_lane(&self, reply: Value) -> Vec<(Lane, RawEntry)> {
        let mut out: Vec<(Lane, RawEntry)> = redis::parse_read_reply_keyed(reply)
            .into_iter()
            .filter_map(|(key, e)| self.g.keys.lane_of(&key).map(|lane| (lane, e)))
            .collect();
        out.sort_by_key(|(lane, _)| *lane);
        out
    }
}

/// An entry read and held, waiting for a slot.
type Queued = (Lane, RawEntry, Token);

/// Fast handlers free their slots within microseconds of each other: gives the ones already
/// running a moment to finish so a read is not split into many small ones. Returns the free
/// slots beside the one the caller holds.
async fn coalesce(g: &Group, concurrency: usize) -> usize {
    let mut free = g.slots.available_permits();
    for _ in 0..COALESCE_YIELDS {
        if free + 1 >= concurrency {
            break;
        }
        tokio::task::yield_now().await;
        let now = g.slots.available_permits();
        if now == free {
            break;
        }
        free = now;
    }
    free
}

/// Starts the first queued entry once a slot (and a turn at the gate) is free; `false` once the
/// worker stops. Cancel-safe: the entry leaves the queue only when it starts. A free slot wins
/// over a stop already signalled, so what was read is handled if it can be.
async fn start_next(
    g: &Arc<Group>,
    queue: &mut VecDeque<Queued>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let permit = tokio::select! {
        biased;
        p = g.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
        _ = stop.wait_for(|s| *s) => return false,
    };
    let turn = tokio::select! {
        biased;
        t = g.gate.shared() => t,
        _ = stop.wait_for(|s| *s) => return false,
    };
    let Some((lane, entry, token)) = queue.pop_front() else {
        return true;
    };
    // A fresh delivery through `>` is always attempt 1.
    let running = Phase::Running {
        attempt: 1,
        delivery: 1,
    };
    let Some(token) = g.held.advance(lane, &entry.id, token, running) else {
        return true;
    };
    Pool::run(
        g,
        Delivery {
            lane,
            id: entry.id,
            fields: entry.fields,
            attempt: 1,
            delivery: 1,
            token,
            has_record: false,
            slot: Slot { permit, turn },
        },
    );
    true
}

async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, backoff: &mut Duration) {
    sleep_unless_stopped(stop, *backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// This consumer's pending entries in one lane: `(id, delivery count)`.
pub(crate) async fn own_pending(g: &Group, lane: Lane) -> Result<Vec<(String, u64)>> {
    redis::pending_of(
        &g.client,
        &g.lane(lane).stream,
        g.group(),
        &g.consumer,
        10_000,
    )
    .await
}

/// Takes the entries a lost read delivered to this consumer: pending for it, delivered once,
/// and not held. They never started, so their first attempt is not charged.
async fn take_orphans(g: &Arc<Group>) {
    // Entries settled here whose XACK is still queued are pending and unheld too: wait until the
    // acks are out, so they are not taken for orphans and run again.
    let mut stop = g.stop.clone();
    tokio::select! {
        () = g.unacked.drained() => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    for lane in g.lanes() {
        let pending = match own_pending(g, lane).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this consumer's pending entries; the scanner will reclaim lost deliveries");
                continue;
            }
        };
        let mut found = 0;
        for (id, count) in pending {
            if count != 1 {
                continue;
            }
            if let Some(token) = g.held.insert(lane, &id, Phase::Claimed) {
                found += 1;
                take::schedule(g, lane, &id, token, Duration::ZERO, true);
            }
        }
        if found > 0 {
            tracing::warn!(
                count = found,
                "a lost read reply had delivered entries; taking them as never started"
            );
        }
    }
}
