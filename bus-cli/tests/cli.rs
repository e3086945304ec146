//! The `streambus` binary against a real Redis.

use bus_core::testing::RedisAccess;
use integration_tests::fixtures::Order;
use std::process::Command;

use bus_core::{HandlerError, SubscriberOptions};
use integration_tests::{eventually, TestEnv};

fn cli(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["--url", &env.url, "--prefix", &env.prefix])
        .args(args)
        .output()
        .expect("run streambus");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_inspect_and_repair_dead_letters() {
    let env = TestEnv::new("cli").await;
    let w = env
        .bus
        .worker()
        .subscribe(bus_core::subscriber_fn(
            SubscriberOptions::new("billing"),
            |o: Order, _| async move {
                if o.n < 3 {
                    Err(HandlerError::reject("card declined"))
                } else {
                    Ok(())
                }
            },
        ))
        .start()
        .await
        .expect("start");
    for n in 0..5 {
        env.bus.publish(&Order { n }).await.expect("publish");
    }
    let dlq = env.bus.dead_letters("orders", "billing").expect("dlq");
    eventually(
        std::time::Duration::from_secs(30),
        "3 dead letters, nothing pending",
        || async {
            dlq.count().await.expect("count") == 3
                && integration_tests::pending_count(&env.bus, "orders", "billing").await == Some(0)
        },
    )
    .await;
    w.shutdown().await.expect("shutdown");

    let (ok, out) = cli(&env, &["streams"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "orders");

    let (ok, out) = cli(&env, &["--json", "info", "orders"]);
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(info["lanes"]["normal"], 5);
    assert_eq!(info["groups"][0]["group"], "billing");
    assert_eq!(info["groups"][0]["dead_letters"], 3);
    assert_eq!(info["groups"][0]["pending"], 0);

    let (ok, out) = cli(&env, &["--json", "dlq", "list", "orders", "billing"]);
    assert!(ok, "{out}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r["reason"] == "rejected" && r["error"] == "card declined"));
    let first = rows[0]["id"].as_str().expect("id").to_owned();

    let (ok, out) = cli(&env, &["dlq", "purge", "orders", "billing", &first]);
    assert!(ok && out.contains("purged 1"), "{out}");
    let (ok, out) = cli(
        &env,
        &["dlq", "replay", "orders", "billing", "--all", "--yes"],
    );
    assert!(ok && out.contains("replayed 2"), "{out}");
    assert_eq!(dlq.count().await.expect("count"), 0);
    let (ok, out) = cli(&env, &["trim", "orders"]);
    assert!(ok && out.contains("removed"), "{out}");
    // Bad input is a clear error, not a panic.
    let (ok, out) = cli(&env, &["dlq", "replay", "orders", "billing"]);
    assert!(!ok && out.contains("--all"), "{out}");
    let (ok, out) = cli(&env, &["info", "bad stream"]);
    assert!(!ok && out.contains("invalid stream name"), "{out}");
}

#[test]
fn the_redis_password_is_never_printed() {
    let secret = "s3cret-pw";
    let url = format!("redis://app:{secret}@127.0.0.1:1/0");
    // --help shows where the URL comes from, not its value.
    let help = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .arg("--help")
        .env("REDIS_URL", &url)
        .output()
        .expect("run streambus --help");
    let text =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    assert!(text.contains("REDIS_URL"), "{text}");
    assert!(
        !text.contains(secret),
        "--help printed the password: {text}"
    );
    // A connection error names the server, redacted.
    let out = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["streams"])
        .env("REDIS_URL", &url)
        .output()
        .expect("run streambus");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(
        !text.contains(secret),
        "an error printed the password: {text}"
    );
}

/// Dead letters whose error carries a terminal escape sequence, in a fresh environment.
async fn dead_letters_with(env: &TestEnv, n: u64, error: &'static str) {
    let w = env
        .bus
        .worker()
        .subscribe(bus_core::subscriber_fn(
            SubscriberOptions::new("billing"),
            move |_o: Order, _| async move { Err::<(), _>(HandlerError::reject(error)) },
        ))
        .start()
        .await
        .expect("start");
    for i in 0..n {
        env.bus.publish(&Order { n: i }).await.expect("publish");
    }
    let dlq = env.bus.dead_letters("orders", "billing").expect("dlq");
    eventually(
        std::time::Duration::from_secs(30),
        "the dead letters",
        || async { dlq.count().await.expect("count") == n },
    )
    .await;
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_operator_commands_ask_first_and_typos_are_errors() {
    let env = TestEnv::new("clisafe").await;
    dead_letters_with(&env, 4, "evil \x1b[2J\x1b[31mred").await;
    let dlq = env.bus.dead_letters("orders", "billing").expect("dlq");

    // Nobody to ask (stdin is not a terminal): refused, nothing changes.
    let (ok, out) = cli(&env, &["dlq", "purge", "orders", "billing", "--all"]);
    assert!(!ok && out.contains("--yes"), "{out}");
    assert_eq!(dlq.count().await.expect("count"), 4);
    // A dry run says what would change and changes nothing.
    let (ok, out) = cli(
        &env,
        &[
            "--json",
            "dlq",
            "purge",
            "orders",
            "billing",
            "--all",
            "--dry-run",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["would_change"], 4);
    assert_eq!(dlq.count().await.expect("count"), 4);
    // Typos in the group, the stream or the prefix are errors.
    let (ok, out) = cli(
        &env,
        &["dlq", "purge", "orders", "biling", "--all", "--yes"],
    );
    assert!(!ok && out.contains("no group"), "{out}");
    let (ok, out) = cli(&env, &["info", "order"]);
    assert!(!ok && out.contains("no stream"), "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args([
            "--url",
            &env.url,
            "--prefix",
            "no-such-prefix",
            "dlq",
            "list",
            "orders",
            "billing",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    // Wire strings cannot drive the terminal.
    let (ok, out) = cli(&env, &["dlq", "list", "orders", "billing"]);
    assert!(ok, "{out}");
    assert!(
        !out.contains('\x1b'),
        "raw escape sequence printed: {out:?}"
    );
    assert!(out.contains("\\u{1b}[31mred"), "{out}");
    // With --yes, the exact count.
    let (ok, out) = cli(
        &env,
        &[
            "--json", "dlq", "purge", "orders", "billing", "--all", "--yes",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["purged"], 4);
    assert_eq!(dlq.count().await.expect("count"), 0);
    let (ok, out) = cli(&env, &["--json", "trim", "orders"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(v["removed"].is_u64(), "{v}");
    // Events wait and no consumer of the group is active (its worker left): flagged.
    env.bus.publish(&Order { n: 99 }).await.expect("publish");
    let (ok, out) = cli(&env, &["--json", "info", "orders"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["groups"][0]["stalled"], true, "{v}");
    let (ok, out) = cli(&env, &["info", "orders"]);
    assert!(ok && out.contains("STALLED"), "{out}");
    // A group nobody reads any more can be dropped, with its side keys.
    let (ok, out) = cli(&env, &["group", "drop", "orders", "billing"]);
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out) = cli(&env, &["group", "drop", "orders", "billing", "--yes"]);
    assert!(ok && out.contains("dropped"), "{out}");
    let info = env.bus.inspect("orders").await.expect("inspect");
    assert!(info.groups.is_empty(), "{info:?}");
    assert!(env
        .keys()
        .await
        .iter()
        .all(|k| !k.contains(":dlq:billing") && !k.contains(":retry:") && !k.contains(":moved:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_a_private_ca_and_a_client_certificate() {
    use integration_tests::support::{tls_available, TlsRedis};
    if !tls_available() {
        return;
    }
    let dir = integration_tests::procs::TempDir::new("clitls");
    let redis = TlsRedis::start(&dir.0, true);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_streambus"))
            .args(["--url", &redis.url(), "--prefix", "clitls"])
            .args(extra)
            .arg("streams")
            .output()
            .expect("run streambus");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let ca = redis.path("server-ca.pem");
    let (cert, key) = (redis.path("client.pem"), redis.path("client.key"));
    let ca = ca.to_str().expect("path");
    let (ok, out) = run(&["--tls-ca", ca]);
    assert!(!ok, "the server requires a client certificate: {out}");
    let (ok, out) = run(&[
        "--tls-ca",
        ca,
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
    ]);
    assert!(ok, "{out}");
}

/// `trim --all` reaches streams nobody subscribes to: entries older than the group-less max age
/// go, a stream with a group keeps what its group needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_all_bounds_streams_nobody_subscribes_to() {
    use fred::prelude::*;
    let env = TestEnv::new("cli-trimall").await;
    let audit = env.bus.stream_key("audit").expect("key");
    let orders = env.bus.stream_key("orders").expect("key");
    // Entries from two hours ago in both streams; "orders" has a group that read nothing.
    let old = integration_tests::support::redis_now_ms(&env.bus).await - 2 * 3600 * 1000;
    for key in [&audit, &orders] {
        for seq in 1..=3 {
            let _: String = env
                .bus
                .redis()
                .xadd(
                    key.as_str(),
                    false,
                    None,
                    format!("{old}-{seq}"),
                    ("f", "v"),
                )
                .await
                .expect("XADD");
        }
    }
    integration_tests::support::create_group(&env.bus, "orders", "billing").await;
    let (ok, out) = cli(&env, &["trim"]);
    assert!(!ok && out.contains("--all"), "{out}");
    let (ok, out) = cli(
        &env,
        &[
            "--json",
            "trim",
            "--all",
            "--without-groups-max-age-secs",
            "3600",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["removed"], 3, "{v}");
    assert_eq!(v["streams"][0]["stream"], "audit", "{v}");
    let left: u64 = env.bus.redis().xlen(audit.as_str()).await.expect("XLEN");
    assert_eq!(left, 0);
    let left: u64 = env.bus.redis().xlen(orders.as_str()).await.expect("XLEN");
    assert_eq!(left, 3);
}
