//! The command line: defaults, flags, `--only` and refused values.

use clap::CommandFactory;

use super::*;

fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
    let args = Args::try_parse_from(std::iter::once("loadgen").chain(argv.iter().copied()))?;
    Ok(args.settled())
}

#[test]
fn command_is_consistent() {
    Args::command().debug_assert();
}

#[test]
fn defaults() {
    let a = parse(&[]).expect("no flags");
    assert!(!a.json && !a.big && a.only.is_none());
    assert_eq!(
        (a.events, a.latency_secs, a.rate, a.repeat, a.concurrency),
        (100_000, 10, 2_000, 3, 32)
    );
    assert!(WORKLOADS.iter().all(|w| a.wants(w) == (*w != "big")));
    assert_eq!(a.high_rate(), Some(20_000));
    assert_eq!(
        parse(&["--high-rate", "0"]).expect("valid").high_rate(),
        None
    );
}

#[test]
fn quick() {
    let a = parse(&["--quick", "--json"]).expect("valid flags");
    assert_eq!((a.events, a.repeat, a.latency_secs), (20_000, 1, 2));
    for w in ["drain", "fanout", "retry", "publish", "latency", "raw"] {
        assert!(a.wants(w), "{w}");
    }
    for w in ["blocking", "rb", "big"] {
        assert!(!a.wants(w), "{w}");
    }
}

#[test]
fn the_guard_flags_only_collapsed_ratios() {
    let mut r = report::Report {
        drain_ratio: Some(0.45),
        publish_ratio: Some(0.9),
        latency_ratio: Some(1.4),
        latency_p99_ms: Some(0.5),
        latency_ratio_20k: Some(4.0),
        latency_p99_ms_20k: Some(2.0),
        ..Default::default()
    };
    // A high latency ratio at a fast p99 is noise, not a collapse.
    assert!(r.collapsed().is_empty());
    r.drain_ratio = Some(0.25);
    r.latency_p99_ms_20k = Some(8.0);
    let c = r.collapsed();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c[0].starts_with("drain_ratio = 0.25"), "{c:?}");
}

#[test]
fn flags() {
    let a = parse(&[
        "--json",
        "--events",
        "5",
        "--latency-secs",
        "2",
        "--rate",
        "7",
        "--repeat",
        "1",
        "--concurrency",
        "8",
        "--big",
    ])
    .expect("valid flags");
    assert!(a.json && a.big);
    assert_eq!(
        (a.events, a.latency_secs, a.rate, a.repeat, a.concurrency),
        (5, 2, 7, 1, 8)
    );
    assert!(WORKLOADS.iter().all(|w| a.wants(w)));
    // The last of a repeated flag wins.
    assert_eq!(
        parse(&["--events", "1", "--events", "2"])
            .map(|a| a.events)
            .ok(),
        Some(2)
    );
}

#[test]
fn only() {
    let a = parse(&["--only", " drain, raw ,"]).expect("valid list");
    assert!(a.wants("drain") && a.wants("raw") && !a.wants("fanout") && !a.big);
    let a = parse(&["--only", "big"]).expect("valid list");
    assert!(a.big && a.wants("big") && !a.wants("drain"));
    let a = parse(&["--only", "blocking"]).expect("valid list");
    assert!(a.wants("blocking") && !a.wants("drain") && !a.big);
    assert!(parse(&["--only", "drain,nope"]).is_err());
    // The blocking workload caps its backlog so it takes seconds, not minutes.
    assert_eq!(workloads::blocking::events(100_000), 20_000);
    assert_eq!(workloads::blocking::events(5), 5);
}

#[test]
fn zero_and_unknown_are_refused() {
    for flag in [
        "--events",
        "--latency-secs",
        "--rate",
        "--repeat",
        "--concurrency",
    ] {
        assert!(parse(&[flag, "0"]).is_err(), "{flag} 0");
    }
    assert!(parse(&["--bogus"]).is_err());
}
