//! Typed helpers for the plain commands several features send.

use fred::prelude::*;
use fred::types::Value;

use std::collections::HashMap;

use super::eval;
use super::reply::{parse_autoclaim_justid, parse_entries, parse_pending_rows, value_string};
use super::scripts;
use crate::error::ClientResult;
use crate::error::Result;

/// Every key matching a glob `pattern`, by a `SCAN` cursor loop (bounded work per call).
pub(crate) async fn scan_keys(client: &Client, pattern: &str) -> Result<Vec<String>> {
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let reply: Value = client
            .custom(
                fred::types::CustomCommand::new_static("SCAN", None, false),
                vec![
                    cursor,
                    "MATCH".into(),
                    pattern.to_owned(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await
            .client_err()?;
        let (next, keys): (String, Vec<String>) = reply.convert().client_err()?;
        out.extend(keys);
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Creates a consumer group, accepting one that exists already.
pub(crate) async fn ensure_group(
    client: &Client,
    key: &str,
    group: &str,
    start: &str,
) -> Result<bool> {
    match client
        .xgroup_create::<Value, _, _, _>(key, group, start, true)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.details().starts_with("BUSYGROUP") => Ok(false),
        Err(e) => Err(crate::error::Error::client(e)),
    }
}

/// Moves a key written under an older key layout to its new name, unless the new one exists.
/// Returns whether it moved.
pub(crate) async fn adopt_renamed_key(client: &Client, old: &str, new: &str) -> Result<bool> {
    let moved = eval(
        scripts::adopt_renamed_key_script(),
        client,
        vec![old.to_owned(), new.to_owned()],
        vec![],
    )
    .await?;
    Ok(moved.as_u64() == Some(1))
}

/// One consumer group of a stream, from `XINFO GROUPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRow {
    pub(crate) name: String,
    pub(crate) pending: u64,
    /// `None` when Redis cannot tell (entries deleted in the middle of the stream).
    pub(crate) lag: Option<u64>,
    pub(crate) consumers: u64,
}

/// One consumer of a group, from `XINFO CONSUMERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerRow {
    pub(crate) name: String,
    pub(crate) pending: u64,
    pub(crate) idle_ms: u64,
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<u64> {
    map.get(name).and_then(Value::as_u64)
}

/// The groups of a stream; none when the stream does not exist.
pub(crate) async fn groups_of(client: &Client, key: &str) -> Result<Vec<GroupRow>> {
    let infos: Vec<HashMap<String, Value>> = match client.xinfo_groups(key).await {
        Ok(v) => v,
        Err(e) if e.details().contains("no such key") => Vec::new(),
        Err(e) => return Err(crate::error::Error::client(e)),
    };
    Ok(infos
        .into_iter()
        .filter_map(|g| {
            Some(GroupRow {
                name: g.get("name").cloned().and_then(value_string)?,
                pending: field(&g, "pending").unwrap_or(0),
                lag: field(&g, "lag"),
                consumers: field(&g, "consumers").unwrap_or(0),
            })
        })
        .collect())
}

/// The consumers of a group. A consumer whose row cannot be read counts as busy (pending 1,
/// idle 0), so nothing is ever deleted on a misread.
pub(crate) async fn consumers_of(
    client: &Client,
    key: &str,
    group: &str,
) -> Result<Vec<ConsumerRow>> {
    let infos: Vec<HashMap<String, Value>> =
        client.xinfo_consumers(key, group).await.client_err()?;
    Ok(infos
        .into_iter()
        .filter_map(|c| {
            Some(ConsumerRow {
                name: c.get("name").cloned().and_then(value_string)?,
                pending: field(&c, "pending").unwrap_or(1),
                idle_ms: field(&c, "idle").unwrap_or(0),
            })
        })
        .collect())
}

/// The entries `consumer` has pending in a group (at most `count`): `(id, delivery count)`.
pub(crate) async fn pending_of(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
    count: u64,
) -> Result<Vec<(String, u64)>> {
    let rows: Value = client
        .xpending(key, group, ("-", "+", count, consumer))
        .await
        .client_err()?;
    Ok(parse_pending_rows(rows))
}

/// An entry's fields as `XADD` takes them.
pub(crate) type Fields = Vec<(fred::types::Key, Value)>;

/// `XADD key * fields…`: the new entry's id.
pub(crate) async fn add_entry(client: &Client, key: &str, fields: Fields) -> Result<String> {
    client
        .xadd(key, false, None, "*", fields)
        .await
        .client_err()
}

/// `XADD` then `WAIT replicas timeout` in one pipeline on the client's one connection (`WAIT`
/// counts that connection's writes): the new entry's id and how many replicas confirmed.
pub(crate) async fn add_entry_and_wait(
    client: &Client,
    key: &str,
    fields: Fields,
    replicas: u32,
    timeout: std::time::Duration,
) -> Result<(String, i64)> {
    let pipeline = client.pipeline();
    let () = pipeline
        .xadd(key, false, None, "*", fields)
        .await
        .client_err()?;
    let () = pipeline
        .wait(i64::from(replicas), timeout.as_millis().max(1) as i64)
        .await
        .client_err()?;
    pipeline.all().await.client_err()
}

/// Many `XADD`s to one key in one pipeline: the new entries' ids, in order.
pub(crate) async fn add_entries(
    client: &Client,
    key: &str,
    entries: impl IntoIterator<Item = Fields>,
) -> Result<Vec<String>> {
    // One key for the whole batch: clones share its bytes.
    let key = fred::types::Key::from(key);
    let pipeline = client.pipeline();
    for fields in entries {
        let () = pipeline
            .xadd(key.clone(), false, None, "*", fields)
            .await
            .client_err()?;
    }
    pipeline.all().await.client_err()
}

/// Acknowledges `ids` in a group and, in the same pipeline, deletes the attempt records of
/// `with_records` (a subset of `ids`).
pub(crate) async fn ack(
    client: &Client,
    key: &str,
    group: &str,
    ids: &[&str],
    records: &str,
    with_records: &[&str],
) -> Result<()> {
    if with_records.is_empty() {
        let _: u64 = client.xack(key, group, ids.to_vec()).await.client_err()?;
        return Ok(());
    }
    let p = client.pipeline();
    let () = p.xack(key, group, ids.to_vec()).await.client_err()?;
    let () = p.hdel(records, with_records.to_vec()).await.client_err()?;
    let _: Vec<u64> = p.all().await.client_err()?;
    Ok(())
}

/// `XREADGROUP GROUP group consumer COUNT count [BLOCK ms] STREAMS keys… > …` on `reader` (a
/// client with its own command options). `None` when nothing arrived.
pub(crate) async fn read_new<C: StreamsInterface + Sync>(
    reader: &C,
    keys: Vec<String>,
    group: &str,
    consumer: &str,
    count: usize,
    block_ms: Option<u64>,
) -> Result<Value> {
    let ids = vec![">"; keys.len()];
    reader
        .xreadgroup(
            group,
            consumer,
            Some(count as u64),
            block_ms,
            false,
            keys,
            ids,
        )
        .await
        .client_err()
}

/// One `XAUTOCLAIM … JUSTID` page: `(next cursor, claimed ids, deleted ids)`, `None` for a reply
/// of an unexpected shape.
pub(crate) async fn autoclaim_page(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
    min_idle: std::time::Duration,
    cursor: &str,
    count: usize,
) -> Result<Option<(String, Vec<String>, Vec<String>)>> {
    let reply: Value = client
        .xautoclaim(
            key,
            group,
            consumer,
            min_idle.as_millis() as u64,
            cursor,
            Some(count as u64),
            true,
        )
        .await
        .client_err()?;
    Ok(parse_autoclaim_justid(reply))
}

/// Whether Redis answers a `PING` within `within`.
pub(crate) async fn answers(client: &Client, within: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(within, client.ping::<Value>(None)).await,
        Ok(Ok(_))
    )
}

/// Deletes fields of a hash; errors are ignored (the caller only tidies up).
pub(crate) async fn forget_fields(client: &Client, key: &str, fields: Vec<String>) {
    let _: std::result::Result<i64, _> = client.hdel(key, fields).await;
}

/// Every field of a hash.
pub(crate) async fn hash_fields(client: &Client, key: &str) -> Result<HashMap<String, Value>> {
    client.hgetall(key).await.client_err()
}

/// Entries from `start` to `end` (`XRANGE` bounds), at most `limit`.
pub(crate) async fn entries(
    client: &Client,
    key: &str,
    start: &str,
    end: &str,
    limit: usize,
) -> Result<Vec<crate::envelope::RawEntry>> {
    let reply: Value = client
        .xrange(key, start, end, Some(limit as u64))
        .await
        .client_err()?;
    Ok(parse_entries(reply))
}

/// The newest entry's id.
pub(crate) async fn last_entry_id(client: &Client, key: &str) -> Result<Option<String>> {
    let reply: Value = client
        .xrevrange(key, "+", "-", Some(1))
        .await
        .client_err()?;
    Ok(parse_entries(reply).into_iter().next().map(|e| e.id))
}

/// Length of a stream (0 when it does not exist).
pub(crate) async fn stream_len(client: &Client, key: &str) -> Result<u64> {
    client.xlen(key).await.client_err()
}

/// Size of a sorted set (0 when it does not exist).
pub(crate) async fn set_len(client: &Client, key: &str) -> Result<u64> {
    client.zcard(key).await.client_err()
}

/// Deletes entries of a stream by id; how many were deleted.
pub(crate) async fn delete_entries(client: &Client, key: &str, ids: Vec<String>) -> Result<u64> {
    client.xdel(key, ids).await.client_err()
}

/// Counts a key's entries and unlinks it, in one transaction: exactly how many went.
pub(crate) async fn count_and_unlink_stream(client: &Client, key: &str) -> Result<u64> {
    let tx = client.multi();
    let () = tx.xlen(key).await.client_err()?;
    let () = tx.unlink(key).await.client_err()?;
    let (n, _): (u64, u64) = tx.exec(true).await.client_err()?;
    Ok(n)
}

/// Unlinks keys (memory freed off Redis's main thread); how many existed.
pub(crate) async fn unlink(client: &Client, keys: Vec<String>) -> Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    client.unlink(keys).await.client_err()
}

/// Destroys a consumer group; false when it (or its stream) did not exist.
pub(crate) async fn destroy_group(client: &Client, key: &str, group: &str) -> Result<bool> {
    match client.xgroup_destroy::<bool, _, _>(key, group).await {
        Ok(d) => Ok(d),
        Err(e) if e.details().contains("requires the key to exist") => Ok(false),
        Err(e) => Err(crate::error::Error::client(e)),
    }
}
