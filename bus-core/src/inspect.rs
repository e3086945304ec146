//! Read-only inspection for operators (the `streambus` CLI uses it): streams, lanes, groups, lag,
//! pending, dead letters, delayed events.

use crate::bus::Bus;
use crate::conn::Conn;
use crate::error::Result;
use crate::names::{validate_name, Priority};
use crate::redis;

/// One consumer group of a stream, summed over the priority lanes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group.
    pub name: String,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    /// Not yet delivered (Redis 7 `lag`; `None` when Redis cannot tell, e.g. after trimming).
    pub lag: Option<u64>,
    /// Consumers (worker processes) in the group.
    pub consumers: u64,
    /// Entries in the group's dead-letter stream.
    pub dead_letters: u64,
    /// Consumers that read or claimed something within the last [`STALE_AFTER`].
    pub active_consumers: u64,
}

impl GroupInfo {
    /// Events wait for this group but none of its consumers has been active within
    /// [`STALE_AFTER`]: nobody is working for it, and the stream cannot be trimmed past what it
    /// has not read. Either its workers are down, or the service is gone (drop the group).
    pub fn is_stalled(&self) -> bool {
        self.lag.unwrap_or(0) + self.pending > 0 && self.active_consumers == 0
    }
}

/// How long a consumer may be idle and still count as active.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A stream's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream.
    pub stream: String,
    /// Entries per priority lane (high, normal, low).
    pub lane_lengths: Vec<(Priority, u64)>,
    /// Events waiting in the delayed set.
    pub delayed: u64,
    /// Its consumer groups.
    pub groups: Vec<GroupInfo>,
}

impl Bus {
    /// The streams under this bus's prefix: every stream with an entry or a group in any lane.
    pub async fn streams(&self) -> Result<Vec<String>> {
        streams(&self.conn).await
    }

    /// Lanes, groups, pending, lag, dead letters and delayed events of one stream.
    pub async fn inspect(&self, stream: &str) -> Result<StreamInfo> {
        validate_name("stream", stream)?;
        let keys = self.keys(stream);
        let c = &self.conn.client;
        let mut lane_lengths = Vec::new();
        let mut groups: Vec<GroupInfo> = Vec::new();
        for p in Priority::ALL {
            let key = keys.lane(p);
            let len = redis::stream_len(c, &key).await?;
            lane_lengths.push((p, len));
            for g in crate::redis::groups_of(c, &key).await? {
                let (name, pending, lag, consumers) = (g.name, g.pending, g.lag, g.consumers);
                match groups.iter_mut().find(|x| x.name == name) {
                    Some(x) => {
                        x.pending += pending;
                        x.lag = match (x.lag, lag) {
                            (Some(a), Some(b)) => Some(a + b),
                            _ => None,
                        };
                        x.consumers = x.consumers.max(consumers);
                    }
                    None => groups.push(GroupInfo {
                        name,
                        pending,
                        lag,
                        consumers,
                        dead_letters: 0,
                        active_consumers: 0,
                    }),
                }
            }
        }
        for g in &mut groups {
            g.dead_letters = redis::stream_len(c, &keys.dead_letter(&g.name)).await?;
            let mut active = std::collections::HashSet::new();
            for p in Priority::ALL {
                let consumers = crate::redis::consumers_of(c, &keys.lane(p), &g.name)
                    .await
                    .unwrap_or_default();
                for consumer in consumers {
                    if consumer.idle_ms < STALE_AFTER.as_millis() as u64 {
                        active.insert(consumer.name);
                    }
                }
            }
            g.active_consumers = active.len() as u64;
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        let delayed = redis::set_len(c, &keys.delayed()).await?;
        Ok(StreamInfo {
            stream: stream.to_owned(),
            lane_lengths,
            delayed,
            groups,
        })
    }

    /// Removes a consumer group from a stream for good: the group on every lane (its pending
    /// entries are forgotten), its dead letters and its attempt records. A group that no service
    /// reads any more otherwise pins its stream forever (trimming keeps what it has not read).
    /// Returns whether the group existed. Workers of that group still running would re-create it.
    pub async fn drop_group(&self, stream: &str, group: &str) -> Result<bool> {
        validate_name("stream", stream)?;
        validate_name("group", group)?;
        let keys = self.keys(stream);
        let c = &self.conn.client;
        let mut existed = false;
        for p in Priority::ALL {
            existed |= redis::destroy_group(c, &keys.lane(p), group).await?;
            redis::unlink(c, vec![keys.lane_retries(p, group)]).await?;
        }
        let dlq = keys.dead_letter(group);
        // Markers of recently settled entries expire by themselves; removed here all the same.
        let markers: Vec<String> = redis::scan_keys(c, &keys.settled_marker_pattern(group))
            .await?
            .into_iter()
            .filter(|k| keys.marker_group(k) == Some(group))
            .collect();
        for chunk in markers.chunks(500) {
            redis::unlink(c, chunk.to_vec()).await?;
        }
        redis::unlink(c, vec![dlq]).await?;
        Ok(existed)
    }
}

/// See [`Bus::streams`].
pub(crate) async fn streams(conn: &Conn) -> Result<Vec<String>> {
    let head = format!("{}:{{", conn.prefix);
    let pattern = format!("{}*}}:stream*", crate::names::escape_glob(&head));
    let keys = crate::redis::scan_keys(&conn.client, &pattern).await?;
    let mut out: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let r = k.strip_prefix(&head)?;
            let name = ["}:stream", "}:stream:high", "}:stream:low"]
                .iter()
                .find_map(|suffix| r.strip_suffix(suffix))?;
            (!name.contains(['{', '}'])).then_some(name)
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}
