//! Name rules and the Redis key layout.
//!
//! Every key of one stream shares the hash tag `{<stream>}` so that a stream and all of its side
//! keys live in one Redis Cluster slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:{<stream>}:stream` | stream | the events (normal priority) |
//! | `<prefix>:{<stream>}:stream:high`, `…:stream:low` | stream | the high and low priority lanes |
//! | `<prefix>:{<stream>}:dlq:<group>` | stream | the group's dead letters |
//! | `<prefix>:{<stream>}:retry:<lane>:<group>` (lane `high`, `normal` or `low`) | hash | entry id → attempt record, for entries the group started but has not finished |
//! | `<prefix>:{<stream>}:moved:<group>:<entry id>` | string | who settled an entry and how (10 minutes) |
//! | `<prefix>:{<stream>}:delayed` | sorted set | delayed publishes, scored by due time (Redis clock) |
//! | `<prefix>:{<stream>}:dedup:<key>` | string | de-duplicated publish: event id and entry id, TTL = window |
//! | `<prefix>:{<stream>}:status:<event id>` | hash | per-event, per-group status and result, with a TTL |
//!
//! No two (kind, group, lane, entry) tuples share a key: each kind has its own first segment after
//! the hash tag, the fixed-set lane comes before the group, and a group name is either the last
//! segment or followed only by an entry id (which never contains `:`). Group names may contain
//! `:`, so `billing:high` on the normal lane and `billing` on the high lane stay apart.

use crate::error::{Error, Result};

/// Publish priority (priority lanes). Each lane is a stream of its own under the same hash tag;
/// workers take from higher lanes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Priority {
    /// Taken before everything else.
    High,
    /// The default lane: the stream key itself.
    #[default]
    Normal,
    /// Taken when nothing else waits.
    Low,
}

impl Priority {
    /// All lanes, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The lane's name in keys, metrics and the CLI: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Longest accepted stream, group or prefix name, in bytes.
pub const MAX_NAME_LEN: usize = bus_names::MAX_NAME_LEN;

/// Checks a stream, group or prefix name: non-empty, at most [`MAX_NAME_LEN`] bytes, and no `{`,
/// `}`, whitespace or control characters.
///
/// The rules live in the `bus-names` crate, which `bus-macros` uses for the same check at compile
/// time.
///
/// ```
/// assert!(bus_core::validate_name("stream", "orders").is_ok());
/// assert!(bus_core::validate_name("group", "bill ing").is_err());
/// ```
pub fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    match bus_names::name_error(name) {
        Some(reason) => Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Escapes the glob characters of `s` for a `SCAN MATCH` pattern, so names are matched literally.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The keys of one stream under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamKeys {
    base: String,
    stream: String,
}

impl StreamKeys {
    /// Builds the key set; both names must already be valid.
    pub(crate) fn new(prefix: &str, stream: &str) -> Self {
        let base = format!("{prefix}:{{{stream}}}");
        let stream = format!("{base}:stream");
        Self { base, stream }
    }

    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    pub(crate) fn dead_letter(&self, group: &str) -> String {
        format!("{}:dlq:{group}", self.base)
    }

    pub(crate) fn dedup(&self, key: &str) -> String {
        format!("{}:dedup:{key}", self.base)
    }

    pub(crate) fn status(&self, event_id: &str) -> String {
        format!("{}:status:{event_id}", self.base)
    }

    pub(crate) fn done_channel(&self, event_id: &str) -> String {
        format!("{}:done:{event_id}", self.base)
    }

    pub(crate) fn delayed(&self) -> String {
        format!("{}:delayed", self.base)
    }

    /// Delayed events the mover could not move, with the reason (a capped stream).
    pub(crate) fn delayed_dead_letters(&self) -> String {
        format!("{}:delayed-dlq", self.base)
    }

    /// The stream key of a priority lane (`Normal` is the stream key itself).
    pub(crate) fn lane(&self, p: Priority) -> String {
        match p {
            Priority::High => format!("{}:high", self.stream),
            Priority::Normal => self.stream.clone(),
            Priority::Low => format!("{}:low", self.stream),
        }
    }

    /// The attempt-record hash of a group in a priority lane.
    pub(crate) fn lane_retries(&self, p: Priority, group: &str) -> String {
        format!("{}:retry:{}:{group}", self.base, p.as_str())
    }

    /// Where 0.1 kept a lane's attempt records: `retry:<group>[:high|:low]`, a layout in which group
    /// `billing:high` on the normal lane and group `billing` on the high lane shared one hash.
    /// Workers rename it to [`StreamKeys::lane_retries`] at start.
    pub(crate) fn legacy_lane_retries(&self, p: Priority, group: &str) -> String {
        match p {
            Priority::Normal => format!("{}:retry:{group}", self.base),
            p => format!("{}:retry:{group}:{}", self.base, p.as_str()),
        }
    }

    /// The marker a settled entry of `group` leaves for a re-sent script (10 minutes).
    pub(crate) fn settled_marker(&self, group: &str, entry_id: &str) -> String {
        format!("{}:moved:{group}:{entry_id}", self.base)
    }

    /// A `SCAN` pattern matching every settled marker of `group` (and possibly of groups whose
    /// name starts with `<group>:`; filter with [`StreamKeys::marker_group`]).
    pub(crate) fn settled_marker_pattern(&self, group: &str) -> String {
        format!("{}:moved:{}:*", escape_glob(&self.base), escape_glob(group))
    }

    /// The group a settled-marker key belongs to (`None` for any other key).
    pub(crate) fn marker_group<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key
            .strip_prefix(self.base.as_str())?
            .strip_prefix(":moved:")?;
        let (group, id) = rest.rsplit_once(':')?;
        id.bytes()
            .all(|b| b.is_ascii_digit() || b == b'-')
            .then_some(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "orders",
            "billing-v2",
            "a.b_c:d",
            "Ünïcode",
            &"x".repeat(128),
        ] {
            assert!(validate_name("stream", n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for n in [
            "",
            "a{b",
            "a}b",
            "a b",
            "a\tb",
            "a\nb",
            "a\u{7}b",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(
                    validate_name("group", n),
                    Err(Error::InvalidName { kind: "group", .. })
                ),
                "{n:?}"
            );
        }
    }

    #[test]
    fn keys_share_the_stream_hash_tag() {
        let k = StreamKeys::new("bus", "orders");
        assert_eq!(k.stream(), "bus:{orders}:stream");
        assert_eq!(k.dead_letter("billing"), "bus:{orders}:dlq:billing");
    }

    #[test]
    fn no_two_groups_or_lanes_share_a_side_key() {
        let k = StreamKeys::new("bus", "orders");
        let groups = [
            "billing",
            "billing:high",
            "billing:low",
            "billing:normal",
            "high",
            "a:b",
        ];
        let mut seen = std::collections::HashSet::new();
        for g in groups {
            for p in Priority::ALL {
                assert!(seen.insert(k.lane_retries(p, g)), "{g} {p:?}");
            }
            assert!(seen.insert(k.dead_letter(g)), "{g}");
            for id in ["1-0", "1700000000000-12"] {
                let m = k.settled_marker(g, id);
                assert_eq!(k.marker_group(&m), Some(g));
                assert!(seen.insert(m), "{g} {id}");
            }
        }
        assert_eq!(k.marker_group("bus:{orders}:moved:billing"), None);
    }
}
