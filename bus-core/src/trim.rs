//! Safe stream trimming: trim each stream to the oldest entry some group still needs.
//!
//! Per group, the oldest entry it needs is the smaller of the entry after its last-delivered id
//! (undelivered entries) and its oldest pending id (delivered, not acknowledged). The stream is
//! trimmed with `XTRIM MINID` to the smallest of those over all groups, in one script, so no
//! delivery or claim interleaves. A stream without groups is never trimmed.
//! Optional retention keeps entries younger than a minimum age and at least a minimum count, for
//! late-joining groups and replays.

use std::sync::OnceLock;
use std::time::Duration;

use fred::types::scripts::Script;
use fred::types::Value;
use tokio::sync::watch;

use crate::bus::Bus;
use crate::error::Result;
use crate::redis;

/// What to keep beyond what the groups still need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep entries younger than this (by their id's time, Redis clock).
    pub min_age: Duration,
    /// Keep at least this many newest entries.
    pub min_count: u64,
}

/// KEYS: stream. ARGV: min age ms, min count. Returns how many entries were removed.
const TRIM_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local tms, tseq = nil, nil
for _, g in ipairs(groups) do
  local name, last, pending
  for j = 1, #g, 2 do
    if g[j] == 'name' then name = g[j + 1]
    elseif g[j] == 'last-delivered-id' then last = g[j + 1]
    elseif g[j] == 'pending' then pending = g[j + 1] end
  end
  local fms, fseq = parse(last)
  fseq = fseq + 1
  if pending and pending > 0 then
    local s = redis.call('XPENDING', KEYS[1], name)
    if s[2] then
      local pms, pseq = parse(s[2])
      if less(pms, pseq, fms, fseq) then fms, fseq = pms, pseq end
    end
  end
  if tms == nil or less(fms, fseq, tms, tseq) then tms, tseq = fms, fseq end
end
local min_age = tonumber(ARGV[1])
if min_age > 0 then
  local t = redis.call('TIME')
  local keep_from = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - min_age
  if less(keep_from, 0, tms, tseq) then tms, tseq = keep_from, 0 end
end
local min_count = tonumber(ARGV[2])
if min_count > 0 then
  local r = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', min_count)
  if #r < min_count then return 0 end
  local rms, rseq = parse(r[#r][1])
  if less(rms, rseq, tms, tseq) then tms, tseq = rms, rseq end
end
if tms <= 0 and tseq <= 1 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', tms, tseq))
"#;

fn trim_script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::from_lua(TRIM_LUA))
}

impl Bus {
    /// Trims a stream safely, now: removes only entries every group has delivered and
    /// acknowledged, keeping what `retention` asks for. Returns how many entries were removed.
    /// Workers do this periodically on their own (see [`Worker::trim_every`](crate::Worker::trim_every)).
    /// Each priority lane is trimmed on its own (retention applies per lane).
    pub async fn trim(&self, stream: &str, retention: Retention) -> Result<u64> {
        crate::names::validate_name("stream", stream)?;
        let keys = self.keys(stream);
        let mut removed = 0;
        for p in crate::Priority::ALL {
            let r = redis::eval(
                trim_script(),
                &self.inner.client,
                vec![keys.lane(p)],
                vec![
                    Value::from(retention.min_age.as_millis() as i64),
                    Value::from(retention.min_count as i64),
                ],
            )
            .await?;
            removed += r.as_u64().unwrap_or(0);
        }
        Ok(removed)
    }
}

/// Trims one stream every `interval` until `stop`.
pub(crate) async fn trim_loop(
    bus: Bus,
    stream: &'static str,
    interval: Duration,
    retention: Retention,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        match bus.trim(stream, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(stream, removed = n, "trimmed acknowledged entries"),
            Err(e) => tracing::warn!(stream, error = %e, "trimming failed"),
        }
    }
}
