//! Raw ceilings: the fastest hand-written fred loops for the same work the bus does, writing the
//! same entries (the bus's default envelope, version 2: one field `e` with the line of event id,
//! time, codec and type, then the MessagePack payload of the same [`Load`] event), so the ratios
//! measure the library's own overhead; and the same loops with a minimal one-field entry
//! ([`minimal_entry_fields`]), the physical limit any entry format is measured against.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus_core::{Codec, Event};
use fred::bytes::Bytes;
use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::Value;
use futures::{StreamExt, TryStreamExt};

use crate::{latency_histogram, since_us, BoxError, BoxResult, Load};

/// The fields of one entry, as the bus would write them for `Load::new(seq)` (stamped now).
pub fn entry_fields(seq: u64) -> BoxResult<Vec<(&'static str, Value)>> {
    let payload = Codec::MessagePack.encode(&Load::new(seq))?;
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut value =
        format!("2 {} {ts} msgpack {}\n", uuid::Uuid::now_v7(), Load::NAME).into_bytes();
    value.extend_from_slice(&payload);
    Ok(vec![("e", Value::Bytes(value.into()))])
}

/// The smallest entry that carries the same event: one field, the MessagePack payload alone. The
/// physical limit of what any entry format can cost Redis.
pub fn minimal_entry_fields(seq: u64) -> BoxResult<Vec<(&'static str, Value)>> {
    let payload = Codec::MessagePack.encode(&Load::new(seq))?;
    Ok(vec![("p", Value::Bytes(payload.into()))])
}

/// The fields of entry `seq`.
pub type EntryFields = fn(u64) -> BoxResult<Vec<(&'static str, Value)>>;

/// XADDs `0..n` in explicit `pipeline()`s of `batch` commands, `in_flight` pipelines at a time.
pub async fn xadd_pipelined(
    client: &Client,
    key: &str,
    n: u64,
    batch: u64,
    in_flight: usize,
) -> BoxResult<()> {
    xadd_pipelined_with(client, key, n, batch, in_flight, entry_fields).await
}

/// As [`xadd_pipelined`], with entries made by `fields`.
pub async fn xadd_pipelined_with(
    client: &Client,
    key: &str,
    n: u64,
    batch: u64,
    in_flight: usize,
    fields: EntryFields,
) -> BoxResult<()> {
    let starts: Vec<u64> = (0..n).step_by(batch.max(1) as usize).collect();
    futures::stream::iter(starts)
        .map(|start| async move {
            let p = client.pipeline();
            for seq in start..(start + batch).min(n) {
                let () = p.xadd(key, false, None, "*", fields(seq)?).await?;
            }
            let _: Value = p.all().await?;
            Ok::<(), BoxError>(())
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await
}

/// XADDs `0..n` as independent commands, `in_flight` at a time (fred pipelines them).
pub async fn xadd_concurrent(
    client: &Client,
    key: &str,
    n: u64,
    in_flight: usize,
) -> BoxResult<()> {
    futures::stream::iter(0..n)
        .map(|seq| async move {
            let _: Value = client
                .xadd(key, false, None, "*", entry_fields(seq)?)
                .await?;
            Ok::<(), BoxError>(())
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await
}

/// XADDs `0..n` one at a time, each awaited before the next (the raw twin of awaiting `publish`).
pub async fn xadd_sequential(client: &Client, key: &str, n: u64) -> BoxResult<()> {
    for seq in 0..n {
        let _: Value = client
            .xadd(key, false, None, "*", entry_fields(seq)?)
            .await?;
    }
    Ok(())
}

/// Creates `group` on `key` (and the stream), starting at `start`; an existing group is fine.
pub async fn ensure_group(client: &Client, key: &str, group: &str, start: &str) -> BoxResult<()> {
    match client
        .xgroup_create::<Value, _, _, _>(key, group, start, true)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The entries of an `XREADGROUP` reply on one stream (RESP2 shape), as (entry id, payload): the
/// field `p` of a minimal entry, or what follows the envelope line in the field `e` of a version 2
/// entry. A nil reply (BLOCK timed out) is no entries.
pub fn parse_read(reply: Value) -> Vec<(Str, Option<Bytes>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(mut key_entries) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = key_entries.pop() else {
            continue;
        };
        out.reserve(entries.len());
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop();
            let Some(id) = parts.pop().and_then(Value::into_bytes_str) else {
                continue;
            };
            let mut payload = None;
            if let Some(Value::Array(flat)) = fields {
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    match k.as_bytes() {
                        Some(b"p") => payload = v.into_bytes(),
                        Some(b"e") => {
                            payload = v.into_bytes().and_then(|e| {
                                let nl = e.iter().position(|b| *b == b'\n')?;
                                Some(e.slice(nl + 1..))
                            })
                        }
                        _ => continue,
                    }
                    break;
                }
            }
            out.push((id, payload));
        }
    }
    out
}

/// Decodes the payload of every entry; how many decoded.
fn decode_all(entries: &[(Str, Option<Bytes>)]) -> BoxResult<u64> {
    let mut n = 0;
    for (_, p) in entries {
        if let Some(p) = p {
            let _: Load = Codec::MessagePack.decode(p)?;
            n += 1;
        }
    }
    Ok(n)
}

/// One `XACK` per read, sent in the background (overlapping the next read) and reaped as it is
/// answered, so finished tasks do not pile up in memory.
struct BackgroundAcks {
    client: Client,
    key: String,
    group: String,
    tasks: tokio::task::JoinSet<Result<u64, fred::error::Error>>,
}

impl BackgroundAcks {
    fn new(client: &Client, key: &str, group: &str) -> Self {
        Self {
            client: client.clone(),
            key: key.to_owned(),
            group: group.to_owned(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Decodes every payload of a read and acks the read; how many entries it had.
    fn handle(&mut self, entries: Vec<(Str, Option<Bytes>)>) -> BoxResult<u64> {
        decode_all(&entries)?;
        let n = entries.len() as u64;
        self.ack(entries)?;
        Ok(n)
    }

    /// Sends the XACK for a read (nothing for an empty one) and reaps answered ones.
    fn ack(&mut self, entries: Vec<(Str, Option<Bytes>)>) -> BoxResult<()> {
        if !entries.is_empty() {
            let ids: Vec<Str> = entries.into_iter().map(|(id, _)| id).collect();
            let (client, key, group) = (self.client.clone(), self.key.clone(), self.group.clone());
            self.tasks
                .spawn(async move { client.xack::<u64, _, _, _>(key, group, ids).await });
        }
        while let Some(done) = self.tasks.try_join_next() {
            done??;
        }
        Ok(())
    }

    /// Waits for every XACK to be answered.
    async fn finish(mut self) -> BoxResult<()> {
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

/// Drains `n` entries of the backlog on `key` through a new `group`: `XREADGROUP COUNT count
/// BLOCK` on its own connection, decode every payload, one `XACK` per read sent in the background
/// (overlapping the next read). Returns the time until the last XACK was answered.
pub async fn drain(
    client: &Client,
    key: &str,
    group: &str,
    n: u64,
    count: u64,
) -> BoxResult<Duration> {
    ensure_group(client, key, group, "0").await?;
    let reader = client.clone_new();
    reader.init().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = Instant::now();
    let mut handled = 0;
    let mut acks = BackgroundAcks::new(client, key, group);
    while handled < n {
        if Instant::now() > deadline {
            let _ = reader.quit().await;
            return Err(format!("raw drain stalled at {handled}/{n}").into());
        }
        let reply: Value = reader
            .xreadgroup(group, "raw", Some(count), Some(2_000), false, key, ">")
            .await?;
        handled += acks.handle(parse_read(reply))?;
    }
    acks.finish().await?;
    let took = started.elapsed();
    let _ = reader.quit().await;
    Ok(took)
}

/// The best raw drain under the worker's back-pressure bound: at most `in_flight` entries read
/// and not yet handled, as `reads` concurrent `XREADGROUP COUNT in_flight/reads` (no BLOCK: the
/// backlog is there) pipelined on one connection, so Redis serves one read while the client
/// handles another. Decode and background `XACK` as in [`drain`]. This is what a worker with
/// `concurrency = in_flight` could reach at best without reading ahead.
pub async fn drain_bounded(
    client: &Client,
    key: &str,
    group: &str,
    n: u64,
    in_flight: u64,
    reads: u64,
) -> BoxResult<Duration> {
    ensure_group(client, key, group, "0").await?;
    let reader = client.clone_new();
    reader.init().await?;
    let chunk = (in_flight / reads.max(1)).max(1);
    let read = |reader: Client| {
        let (group, key) = (group.to_owned(), key.to_owned());
        async move {
            reader
                .xreadgroup::<Value, _, _, _, _>(group, "raw", Some(chunk), None, false, key, ">")
                .await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = Instant::now();
    let mut pending: futures::stream::FuturesUnordered<_> =
        (0..reads).map(|_| read(reader.clone())).collect();
    let mut handled = 0;
    let mut acks = BackgroundAcks::new(client, key, group);
    while let Some(reply) = pending.next().await {
        if Instant::now() > deadline {
            let _ = reader.quit().await;
            return Err(format!("raw bounded drain stalled at {handled}/{n}").into());
        }
        handled += acks.handle(parse_read(reply?))?;
        if handled >= n {
            break;
        }
        pending.push(read(reader.clone()));
    }
    drop(pending);
    acks.finish().await?;
    let took = started.elapsed();
    let _ = reader.quit().await;
    if handled < n {
        return Err(format!("raw bounded drain read {handled}/{n}").into());
    }
    Ok(took)
}

/// Calls `publish(seq)` for `0..total` at `rate` per second (each call in its own task, so a slow
/// reply does not delay the schedule), waits for all, and returns the achieved rate.
pub async fn paced<F, Fut>(rate: u64, total: u64, mut publish: F) -> BoxResult<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = BoxResult<()>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..total {
        tokio::time::sleep_until(started + interval.mul_f64(seq as f64)).await;
        tasks.spawn(publish(seq));
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
    }
    let span = started.elapsed().as_secs_f64().max(1e-9);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(total as f64 / span)
}

/// Raw publish→read latency: XADD at `rate`/s for `secs` s on one connection while a reader
/// (`XREADGROUP COUNT 256 BLOCK` on its own connection, decode, XACK in the background) records
/// now − the publish stamp in the payload. Returns the histogram (µs) and the achieved rate.
pub async fn latency(
    client: &Client,
    key: &str,
    rate: u64,
    secs: u64,
) -> BoxResult<(hdrhistogram::Histogram<u64>, f64)> {
    let group = "raw-latency";
    ensure_group(client, key, group, "$").await?;
    let reader = client.clone_new();
    reader.init().await?;
    let total = rate * secs;
    let (c, k) = (client.clone(), key.to_owned());
    let read = tokio::spawn(async move {
        let mut hist = latency_histogram()?;
        let mut acks = BackgroundAcks::new(&c, &k, group);
        let deadline = Instant::now() + Duration::from_secs(secs + 30);
        let mut got = 0;
        while got < total && Instant::now() < deadline {
            let reply: Value = reader
                .xreadgroup(group, "raw", Some(256), Some(500), false, k.as_str(), ">")
                .await?;
            let entries = parse_read(reply);
            for (_, p) in &entries {
                if let Some(p) = p {
                    let ev: Load = Codec::MessagePack.decode(p)?;
                    hist.record(since_us(ev.sent_ns).max(1))?;
                }
            }
            got += entries.len() as u64;
            acks.ack(entries)?;
        }
        acks.finish().await?;
        let _ = reader.quit().await;
        Ok::<_, BoxError>(hist)
    });
    let achieved = paced(rate, total, |seq| {
        let (c, k) = (client.clone(), key.to_owned());
        async move {
            let _: Value = c.xadd(k, false, None, "*", entry_fields(seq)?).await?;
            Ok(())
        }
    })
    .await?;
    let hist = read.await??;
    if hist.len() < total {
        return Err(format!("raw latency: read {} of {total}", hist.len()).into());
    }
    Ok((hist, achieved))
}
