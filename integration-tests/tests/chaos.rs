//! The short chaos run that CI executes (the long one is a documented command in the README).

use std::process::Command;

#[test]
fn short_chaos_run_loses_nothing() {
    if !integration_tests::redis_server_available() {
        eprintln!("skipping: needs redis-server on PATH");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "--events",
            "500",
            "--duration-secs",
            "15",
            "--worker-kills",
            "6",
        ])
        .args(["--redis-kills", "1", "--stalls", "1", "--workers", "3"])
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
    assert_eq!(report["published"], 500, "{report}");
    assert!(
        report["worker_kills"].as_u64().unwrap_or(0) >= 4,
        "{report}"
    );
    assert_eq!(report["redis_kills"], 1, "{report}");
    assert!(
        out.status.success(),
        "chaos exited with {:?}: {report}",
        out.status
    );
}
