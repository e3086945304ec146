//! `streambus`: the operator CLI. Inspect streams and groups, list/replay/purge dead letters,
//! read an event's status, trim a stream safely.
//!
//! ```text
//! streambus [--url redis://127.0.0.1:6379] [--prefix bus] [--json]
//!           [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] <command>
//!   streams                                   list streams
//!   info <stream>                             lanes, delayed events, groups (pending, lag, consumers, dead letters)
//!   dlq list <stream> <group> [--limit N]     dead letters, oldest first
//!   dlq replay <stream> <group> (--all | ID…) [--yes] [--dry-run]
//!                                             send back to that group only (attempts reset)
//!   dlq purge <stream> <group> (--all | ID…) [--yes] [--dry-run]
//!                                             delete dead letters
//!   group drop <stream> <group> [--yes] [--dry-run]
//!                                             remove a group with its dead letters and records
//!   status <stream> <event-id>                per-group status of an event (groups that track status)
//!   trim (<stream> | --all) [--min-age-secs S] [--min-count N]
//!        [--without-groups-max-age-secs S | --keep-without-groups]
//!                                             safe trim now, in bounded steps
//! ```
//! `REDIS_URL` and `STREAMBUS_PREFIX` set the defaults of `--url` and `--prefix`. `--all` asks
//! first (or needs `--yes` without a terminal); an unknown stream or group is an error; text from
//! Redis is printed with control characters escaped.

use std::process::ExitCode;
use std::time::Duration;

use bus_core::{Bus, Retention};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "streambus", version, about = "Operate a Streambus deployment")]
struct Cli {
    /// Redis URL (its password is never printed: the environment value is hidden in --help and
    /// errors show the URL redacted).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    url: String,
    /// Key prefix of the bus.
    #[arg(long, env = "STREAMBUS_PREFIX", default_value = "bus")]
    prefix: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// For rediss:// URLs: trust this CA (PEM file) instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// For rediss:// URLs: client certificate (PEM file) for mutual TLS; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM file).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the streams under the prefix.
    Streams,
    /// Lanes, delayed events and groups of a stream.
    Info { stream: String },
    /// Dead letters of a group.
    Dlq {
        #[command(subcommand)]
        action: Dlq,
    },
    /// Consumer groups.
    Group {
        #[command(subcommand)]
        action: GroupCmd,
    },
    /// Per-group status of an event (for groups that track status).
    Status { stream: String, event_id: String },
    /// Trim a stream now (or every stream with --all): only entries every group has delivered
    /// and acknowledged; in a stream without groups, entries older than
    /// --without-groups-max-age-secs.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["stream", "all"])))]
    Trim {
        stream: Option<String>,
        /// Every stream under the prefix, including streams nobody subscribes to.
        #[arg(long)]
        all: bool,
        /// Keep entries younger than this.
        #[arg(long, default_value_t = 0)]
        min_age_secs: u64,
        /// Keep at least this many newest entries.
        #[arg(long, default_value_t = 0)]
        min_count: u64,
        /// In a stream without groups, remove entries older than this (default 7 days).
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        without_groups_max_age_secs: u64,
        /// Keep every entry of a stream without groups.
        #[arg(long, conflicts_with = "without_groups_max_age_secs")]
        keep_without_groups: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Remove a group for good (its pending entries, dead letters and attempt records too), so it
    /// no longer pins the stream. Asks first unless --yes.
    Drop {
        stream: String,
        group: String,
        #[command(flatten)]
        safety: Safety,
    },
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// List dead letters, oldest first.
    List {
        stream: String,
        group: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send dead letters back to their group only (attempts start again).
    Replay {
        stream: String,
        group: String,
        /// Every dead letter of the group (asks for confirmation unless --yes).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Dead-letter ids (the `id` column of `dlq list`).
        ids: Vec<String>,
        #[command(flatten)]
        safety: Safety,
    },
    /// Delete dead letters.
    Purge {
        stream: String,
        group: String,
        /// Every dead letter of the group (asks for confirmation unless --yes).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        ids: Vec<String>,
        #[command(flatten)]
        safety: Safety,
    },
}

/// Guards for commands that change or delete many dead letters.
#[derive(Debug, clap::Args)]
struct Safety {
    /// Do it without asking (needed with --all when standard input is not a terminal).
    #[arg(long)]
    yes: bool,
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streambus: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, BoxError> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

/// Text from Redis made safe for a terminal: control characters (a crafted entry could carry
/// escape sequences that rewrite the screen) are shown escaped.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The stream must exist under the prefix: a typo in either is an error, not an empty answer.
async fn check_stream(bus: &Bus, stream: &str) -> Result<(), BoxError> {
    bus_core::validate_name("stream", stream)?;
    if bus.streams().await?.iter().any(|s| s == stream) {
        return Ok(());
    }
    Err(format!("no stream {stream:?} under this prefix (see `streambus streams`)").into())
}

/// The group must exist on the stream: a typo is an error, not "purged 0".
async fn check_group(bus: &Bus, stream: &str, group: &str) -> Result<(), BoxError> {
    check_stream(bus, stream).await?;
    let info = bus.inspect(stream).await?;
    if info.groups.iter().any(|g| g.name == group) {
        return Ok(());
    }
    let known: Vec<String> = info.groups.iter().map(|g| printable(&g.name)).collect();
    Err(format!(
        "no group {group:?} on stream {stream:?} under this prefix (groups: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
    .into())
}

/// Asks before changing `n` dead letters, unless `--yes`; refuses when nobody can answer.
fn confirm(what: &str, n: u64, safety: &Safety) -> Result<bool, BoxError> {
    if n == 0 {
        return Ok(true);
    }
    confirm_one(&format!("{what} {n} dead letters"), safety)
}

/// Asks before `what`, unless `--yes`; refuses when nobody can answer.
fn confirm_one(what: &str, safety: &Safety) -> Result<bool, BoxError> {
    use std::io::{BufRead, IsTerminal, Write};
    if safety.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!("{what}: add --yes to confirm (or --dry-run)").into());
    }
    eprint!("{what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Prints a command's result as text or JSON.
fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

/// What a bulk dead-letter command does.
#[derive(Debug, Clone, Copy)]
enum Bulk {
    Replay,
    Purge,
}

impl Bulk {
    fn verb(self) -> &'static str {
        match self {
            Bulk::Replay => "replay",
            Bulk::Purge => "purge",
        }
    }
}

/// The dead letters of one group on one stream.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    stream: &'a str,
    group: &'a str,
}

/// `dlq replay` and `dlq purge`: checks the group, honours `--dry-run` and asks before `--all`.
async fn bulk(
    bus: &Bus,
    json: bool,
    target: Target<'_>,
    op: Bulk,
    all: bool,
    ids: &[String],
    safety: &Safety,
) -> Result<(), BoxError> {
    check_group(bus, target.stream, target.group).await?;
    let dlq = bus.dead_letters(target.stream, target.group)?;
    let selected = selection(all, ids)?;
    let would = match selected {
        None => dlq.count().await?,
        Some(ids) => ids.len() as u64,
    };
    let verb = op.verb();
    if safety.dry_run {
        report(
            json,
            serde_json::json!({"dry_run": true, "action": verb, "would_change": would, "group": target.group}),
            format!("would {verb} {would} (dry run)"),
        );
        return Ok(());
    }
    if selected.is_none() && !confirm(verb, would, safety)? {
        return Err(format!("not confirmed; nothing to {verb}").into());
    }
    let n = match (op, selected) {
        (Bulk::Replay, None) => dlq.replay_all().await?,
        (Bulk::Replay, Some(ids)) => dlq.replay(ids).await?,
        (Bulk::Purge, None) => dlq.purge_all().await?,
        (Bulk::Purge, Some(ids)) => dlq.purge(ids).await?,
    };
    let text = match op {
        Bulk::Replay => format!("replayed {n} to group {}", target.group),
        Bulk::Purge => format!("purged {n}"),
    };
    let key = match op {
        Bulk::Replay => "replayed",
        Bulk::Purge => "purged",
    };
    report(
        json,
        serde_json::json!({key: n, "group": target.group}),
        text,
    );
    Ok(())
}

/// `--all` (→ `None`) or the given dead-letter ids; neither is an error.
fn selection(all: bool, ids: &[String]) -> Result<Option<&[String]>, BoxError> {
    match (all, ids.is_empty()) {
        (true, _) => Ok(None),
        (false, false) => Ok(Some(ids)),
        (false, true) => Err("give dead-letter ids or --all".into()),
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let mut tls = bus_core::TlsOptions::new();
    if let Some(ca) = &cli.tls_ca {
        tls = tls.ca_pem(read_file(ca)?);
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.client_cert_pem(read_file(cert)?, read_file(key)?);
    }
    let bus = Bus::builder()
        .prefix(cli.prefix.clone())
        .connect_timeout(Duration::from_secs(3))
        .tls(tls)
        .connect(&cli.url)
        .await?;
    let json = cli.json;
    match cli.command {
        Command::Streams => {
            let streams = bus.streams().await?;
            if json {
                println!("{}", serde_json::json!(streams));
            } else {
                for s in streams {
                    println!("{}", printable(&s));
                }
            }
        }
        Command::Info { stream } => {
            check_stream(&bus, &stream).await?;
            let info = bus.inspect(&stream).await?;
            if json {
                let groups: Vec<_> = info
                    .groups
                    .iter()
                    .map(|g| {
                        serde_json::json!({"group": g.name, "pending": g.pending, "lag": g.lag,
                            "consumers": g.consumers, "active_consumers": g.active_consumers,
                            "dead_letters": g.dead_letters, "stalled": g.is_stalled()})
                    })
                    .collect();
                let lanes: serde_json::Map<String, serde_json::Value> = info
                    .lane_lengths
                    .iter()
                    .map(|(p, n)| (format!("{p:?}").to_lowercase(), serde_json::json!(n)))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"stream": info.stream, "lanes": lanes, "delayed": info.delayed, "groups": groups})
                );
            } else {
                println!("stream {}", info.stream);
                for (p, n) in &info.lane_lengths {
                    println!("  lane {:<7} {n} entries", format!("{p:?}").to_lowercase());
                }
                println!("  delayed      {}", info.delayed);
                println!(
                    "  {:<24} {:>8} {:>8} {:>10} {:>12}",
                    "group", "pending", "lag", "consumers", "dead letters"
                );
                for g in &info.groups {
                    let lag = g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string());
                    println!(
                        "  {:<24} {:>8} {:>8} {:>10} {:>12}{}",
                        printable(&g.name),
                        g.pending,
                        lag,
                        g.consumers,
                        g.dead_letters,
                        if g.is_stalled() {
                            "  STALLED: events wait and no consumer was active in the last minute"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        Command::Dlq { action } => match action {
            Dlq::List {
                stream,
                group,
                limit,
            } => {
                check_group(&bus, &stream, &group).await?;
                let list = bus.dead_letters(&stream, &group)?.list(limit).await?;
                if json {
                    let rows: Vec<_> = list
                        .iter()
                        .map(|d| {
                            serde_json::json!({"id": d.id, "entry_id": d.entry_id, "event_id": d.event_id,
                                "event_type": d.event_type, "attempts": d.attempts, "reason": d.reason,
                                "error": d.error, "failed_at_ms": d.failed_at_ms, "consumer": d.consumer})
                        })
                        .collect();
                    println!("{}", serde_json::json!(rows));
                } else {
                    for d in list {
                        println!(
                            "{}  entry {}  event {}  {}  attempts {}  {}: {}",
                            printable(&d.id),
                            printable(&d.entry_id),
                            printable(d.event_id.as_deref().unwrap_or("-")),
                            printable(d.event_type.as_deref().unwrap_or("-")),
                            d.attempts,
                            printable(&d.reason),
                            printable(&d.error)
                        );
                    }
                }
            }
            Dlq::Replay {
                stream,
                group,
                all,
                ids,
                safety,
            } => {
                let target = Target {
                    stream: &stream,
                    group: &group,
                };
                bulk(&bus, json, target, Bulk::Replay, all, &ids, &safety).await?;
            }
            Dlq::Purge {
                stream,
                group,
                all,
                ids,
                safety,
            } => {
                let target = Target {
                    stream: &stream,
                    group: &group,
                };
                bulk(&bus, json, target, Bulk::Purge, all, &ids, &safety).await?;
            }
        },
        Command::Group {
            action:
                GroupCmd::Drop {
                    stream,
                    group,
                    safety,
                },
        } => {
            check_group(&bus, &stream, &group).await?;
            if safety.dry_run {
                report(
                    json,
                    serde_json::json!({"dry_run": true, "would_drop": group}),
                    format!("would drop group {group} of stream {stream} (dry run)"),
                );
            } else if confirm_one(&format!("drop group {group} of stream {stream}"), &safety)? {
                let existed = bus.drop_group(&stream, &group).await?;
                report(
                    json,
                    serde_json::json!({"dropped": existed, "group": group}),
                    format!("dropped group {group}"),
                );
            } else {
                return Err("not confirmed; nothing dropped".into());
            }
        }
        Command::Status { stream, event_id } => {
            check_stream(&bus, &stream).await?;
            let status = bus.event_status(&stream, &event_id).await?;
            let mut groups: Vec<_> = status.into_iter().collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            if json {
                let rows: Vec<_> = groups
                    .iter()
                    .map(|(g, s)| {
                        serde_json::json!({"group": g, "state": format!("{:?}", s.state).to_lowercase(),
                            "attempts": s.attempts, "error": s.error, "updated_at_ms": s.updated_at_ms})
                    })
                    .collect();
                println!("{}", serde_json::json!(rows));
            } else if groups.is_empty() {
                println!(
                    "no status recorded for {event_id} (not tracked, not started, or expired)"
                );
            } else {
                for (g, s) in groups {
                    println!(
                        "{}: {:?} after {} attempt(s){}",
                        printable(&g),
                        s.state,
                        s.attempts,
                        s.error
                            .map(|e| format!(", last error: {}", printable(&e)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Command::Trim {
            stream,
            all,
            min_age_secs,
            min_count,
            without_groups_max_age_secs,
            keep_without_groups,
        } => {
            let retention = Retention::new()
                .min_age(Duration::from_secs(min_age_secs))
                .min_count(min_count)
                .without_groups(
                    (!keep_without_groups)
                        .then(|| Duration::from_secs(without_groups_max_age_secs)),
                );
            let trimmed = match stream {
                Some(stream) if !all => {
                    check_stream(&bus, &stream).await?;
                    let removed = bus.trim(&stream, retention).await?;
                    vec![(stream, removed)]
                }
                _ => bus.trim_all(retention).await?,
            };
            let total: u64 = trimmed.iter().map(|(_, n)| n).sum();
            let per_stream: Vec<_> = trimmed
                .iter()
                .map(|(s, n)| serde_json::json!({"stream": s, "removed": n}))
                .collect();
            let text = trimmed
                .iter()
                .map(|(s, n)| format!("{}: removed {n} entries", printable(s)))
                .chain(all.then(|| format!("removed {total} entries in total")))
                .collect::<Vec<_>>()
                .join("\n");
            report(
                json,
                serde_json::json!({"streams": per_stream, "removed": total}),
                text,
            );
        }
    }
    bus.close().await;
    Ok(())
}
