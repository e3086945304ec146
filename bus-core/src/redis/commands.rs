//! Typed helpers for the plain commands several features send.

use fred::prelude::*;
use fred::types::Value;

use std::collections::HashMap;

use super::eval;
use super::reply::{parse_pending_rows, value_string};
use super::scripts;
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
            .await?;
        let (next, keys): (String, Vec<String>) = reply.convert()?;
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
        Err(e) => Err(e.into()),
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
        Err(e) => return Err(e.into()),
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
    let infos: Vec<HashMap<String, Value>> = client.xinfo_consumers(key, group).await?;
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
        .await?;
    Ok(parse_pending_rows(rows))
}
