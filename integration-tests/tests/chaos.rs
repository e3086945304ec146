//! The short chaos run that CI executes (the long one is a documented command in the README).

use std::process::Command;

#[test]
fn short_chaos_run_loses_nothing() {
    if !integration_tests::redis_server_available() {
        eprintln!("skipping: needs redis-server on PATH");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--events", "400", "--duration-secs", "15"])
        .args(["--worker-kills", "6", "--redis-kills", "1", "--stalls", "1"])
        .args(["--long-stalls", "1", "--partitions", "1"])
        .args([
            "--workers",
            "3",
            "--concurrency",
            "4",
            "--settle-secs",
            "90",
        ])
        .output()
        .expect("run the chaos binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    println!("{line}");
    // The checker's explanations (lost or wrongly dead-lettered events) go to stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in stderr.lines().filter(|l| l.starts_with("chaos:")) {
        println!("{l}");
    }
    let report: serde_json::Value = serde_json::from_str(line).expect("a JSON report line");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["false_dead_letters"], 0, "{report}");
    assert_eq!(report["poison_not_dead_lettered"], 0, "{report}");
    assert_eq!(report["pending_at_end"], 0, "{report}");
    assert_eq!(report["published"], 400, "{report}");
    assert!(
        report["worker_kills"].as_u64().unwrap_or(0) >= 4,
        "{report}"
    );
    assert_eq!(report["redis_kills"], 1, "{report}");
    assert_eq!(report["long_stalls"], 1, "{report}");
    assert_eq!(report["partitions"], 1, "{report}");
    assert!(
        report["duplicates"].as_u64() <= report["duplicates_bound"].as_u64(),
        "{report}"
    );
    assert!(
        out.status.success(),
        "chaos exited with {:?}: {report}",
        out.status
    );
}
