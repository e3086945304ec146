//! Redis CPU per command: `INFO commandstats` read before and after a timed phase, the per-command
//! deltas (calls, µs) summed over the repeats, and the table of them per event.
//!
//! The counters are server-wide: any other client of the same Redis during the phase is counted
//! too (as is `INFO cpu`), so run on a quiet Redis for clean figures. `usec` is the time Redis spent
//! executing each command; reading requests and writing replies is outside it, so the rows sum to
//! less than the `INFO cpu` figure. Redis 7 counts a command called from a Lua script under its own
//! name as well as inside `evalsha`/`eval`, so with scripts the rows overlap.

use std::collections::BTreeMap;

use fred::prelude::*;
use serde::Serialize;

use crate::report::Report;

/// Commands shown per workload in the human table.
const TOP: usize = 8;

/// The two counters of one command.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) calls: u64,
    pub(crate) usec: u64,
}

/// Counters by command name (`xreadgroup`, `xinfo|groups`, …).
pub(crate) type Stats = BTreeMap<String, Stat>;

/// Parses the `cmdstat_<name>:calls=…,usec=…,…` lines of `INFO commandstats`; other lines and
/// fields are ignored, as is a line without `calls`.
pub(crate) fn parse(info: &str) -> Stats {
    let mut out = Stats::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .filter_map(|f| f.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        };
        if let Some(calls) = field("calls") {
            let usec = field("usec").unwrap_or(0);
            out.insert(name.to_ascii_lowercase(), Stat { calls, usec });
        }
    }
    out
}

/// `after - before` per command, commands without new calls left out (a counter that went down,
/// e.g. after `CONFIG RESETSTAT`, counts from 0).
pub(crate) fn delta(before: &Stats, after: &Stats) -> Stats {
    after
        .iter()
        .filter_map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            let d = if a.calls < b.calls {
                *a
            } else {
                Stat {
                    calls: a.calls - b.calls,
                    usec: a.usec.saturating_sub(b.usec),
                }
            };
            (d.calls > 0).then(|| (name.clone(), d))
        })
        .collect()
}

async fn snapshot(client: &Client) -> Option<Stats> {
    let info: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .ok()?;
    Some(parse(&info))
}

/// Reads `INFO commandstats` now; [`CmdMeter::stop`] gives the deltas since.
pub(crate) struct CmdMeter(Option<Stats>);

impl CmdMeter {
    pub(crate) async fn start(client: &Client) -> Self {
        Self(snapshot(client).await)
    }

    /// The per-command deltas since [`start`](Self::start) (`None` if a read failed).
    pub(crate) async fn stop(self, client: &Client) -> Option<Stats> {
        Some(delta(&self.0?, &snapshot(client).await?))
    }
}

/// The deltas of every repeat of one workload and the events they delivered.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    events: u64,
    total: Stats,
}

impl Tally {
    /// Adds one run that delivered `events` (nothing if its counters could not be read).
    pub(crate) fn add(&mut self, stats: Option<&Stats>, events: u64) {
        let Some(stats) = stats else { return };
        self.events += events;
        for (name, s) in stats {
            let t = self.total.entry(name.clone()).or_default();
            t.calls += s.calls;
            t.usec += s.usec;
        }
    }

    /// Calls per 1 000 events and µs per event of every command (`None` if nothing was added).
    pub(crate) fn costs(&self) -> Option<BTreeMap<String, Cost>> {
        if self.events == 0 {
            return None;
        }
        let n = self.events as f64;
        let costs = self.total.iter().map(|(name, s)| {
            let cost = Cost {
                calls_per_1k: s.calls as f64 * 1_000.0 / n,
                us_per_event: s.usec as f64 / n,
            };
            (name.clone(), cost)
        });
        Some(costs.collect())
    }
}

/// What one command cost per event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Cost {
    pub(crate) calls_per_1k: f64,
    pub(crate) us_per_event: f64,
}

/// The workloads with a command table: key in `Report::commands`, title, and the series whose
/// `INFO cpu` figure is shown next to it.
pub(crate) const WORKLOADS: [(&str, &str, &str); 7] = [
    ("drain", "W2 drain (default options)", "drain"),
    (
        "raw_drain_count256",
        "raw drain XREADGROUP COUNT 256",
        "raw_drain_count256",
    ),
    (
        "raw_drain_minimal_count256",
        "raw drain of minimal entries, XREADGROUP COUNT 256",
        "raw_drain_minimal_count256",
    ),
    (
        "rb_minimal",
        "redis-benchmark XADD, minimal entry",
        "rb_minimal",
    ),
    ("rb_v2", "redis-benchmark XADD, version 2 entry", "rb_v2"),
    ("rb_v1", "redis-benchmark XADD, version 1 entry", "rb_v1"),
    (
        "retry",
        "W5 retries, 10% fail once (per delivery)",
        "retry_drain",
    ),
];

/// The commands of `costs`, most µs per event first, at most `top` of them.
pub(crate) fn top(costs: &BTreeMap<String, Cost>, top: usize) -> Vec<(&str, Cost)> {
    let mut rows: Vec<(&str, Cost)> = costs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    rows.sort_by(|a, b| b.1.us_per_event.total_cmp(&a.1.us_per_event));
    rows.truncate(top);
    rows
}

/// Prints one Markdown table per workload in `r.commands`.
pub(crate) fn print_tables(r: &Report) {
    if r.commands.is_empty() {
        return;
    }
    println!();
    println!(
        "Redis CPU per command (INFO commandstats deltas over each timed phase, summed over the \
         repeats; server-wide, so other clients of this Redis count too; usec excludes request \
         reading and reply writing; commands called from Lua count under their own names as well \
         as inside evalsha/eval)"
    );
    for (key, title, series) in WORKLOADS {
        let Some(costs) = r.commands.get(key) else {
            continue;
        };
        let cpu = r.medians.get(&format!("{series}_redis_cpu_us"));
        let sum: f64 = costs.values().map(|c| c.us_per_event).sum();
        println!();
        println!(
            "{title}: commands {sum:.2} µs/event{}",
            cpu.map_or(String::new(), |c| format!(", INFO cpu {c:.2} µs/event"))
        );
        println!();
        println!("| command | calls / 1 000 events | µs / event |");
        println!("|---|---|---|");
        for (name, c) in top(costs, TOP) {
            println!("| {name} | {:.1} | {:.3} |", c.calls_per_1k, c.us_per_event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# Commandstats\r\n\
        cmdstat_xreadgroup:calls=10,usec=123,usec_per_call=12.30,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xack:calls=5,usec=20,usec_per_call=4.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xinfo|groups:calls=1,usec=11,usec_per_call=11.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn parses_commandstats() {
        let s = parse(BEFORE);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s["xreadgroup"],
            Stat {
                calls: 10,
                usec: 123
            }
        );
        assert_eq!(s["xinfo|groups"], Stat { calls: 1, usec: 11 });
        // Not a cmdstat line, no calls field, garbage: ignored.
        assert!(parse("used_cpu_sys:1.0\ncmdstat_get:usec=3\ncmdstat_x\n").is_empty());
        assert!(parse("").is_empty());
    }

    #[test]
    fn deltas_and_costs() {
        let after = parse(
            "cmdstat_xreadgroup:calls=14,usec=223,usec_per_call=1\n\
             cmdstat_xack:calls=5,usec=20\n\
             cmdstat_xinfo|groups:calls=0,usec=0\n\
             cmdstat_evalsha:calls=2,usec=40\n",
        );
        let d = delta(&parse(BEFORE), &after);
        // xack unchanged: left out; xinfo went down (reset): counted from 0, no calls: left out.
        let want: Stats = [
            ("evalsha".to_owned(), Stat { calls: 2, usec: 40 }),
            (
                "xreadgroup".to_owned(),
                Stat {
                    calls: 4,
                    usec: 100,
                },
            ),
        ]
        .into();
        assert_eq!(d, want);
        let mut t = Tally::default();
        assert!(t.costs().is_none());
        t.add(None, 1_000);
        t.add(Some(&d), 100);
        t.add(Some(&d), 100);
        let c = t.costs().expect("two runs");
        assert_eq!(
            c["xreadgroup"],
            Cost {
                calls_per_1k: 40.0,
                us_per_event: 1.0
            }
        );
        let rows = top(&c, 1);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "xreadgroup");
    }
}
