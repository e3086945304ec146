//! Trimming on long streams: exact results from bounded steps, Redis never blocked by a trim,
//! and a retention for streams that have no group.

use bus_core::testing::RedisAccess;
use std::time::Duration;

use bus_core::{Bus, Retention};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::support::{redis_now_ms, OwnRedis};
use integration_tests::TestEnv;

/// Appends `n` entries with ids `<ms>-1`, `<ms>-2`, … (or `*` when `ms` is `None`) in batches of
/// 10 000 per script, a few hundred bytes each, like small events.
async fn fill(bus: &Bus, key: &str, n: u64, ms: Option<u64>) {
    const FILL: &str = r#"
local ms, from, to = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local payload = string.rep('x', 200)
for i = from, to do
  local id = '*'
  if ms ~= '' then id = ms .. '-' .. i end
  redis.call('XADD', KEYS[1], id, 'v', '1', 'type', 'Filler', 'p', payload)
end
return to - from + 1
"#;
    let mut from = 1;
    while from <= n {
        let to = (from + 9_999).min(n);
        let _: u64 = bus
            .redis()
            .eval(
                FILL,
                vec![key],
                vec![
                    ms.map(|m| m.to_string()).unwrap_or_default(),
                    from.to_string(),
                    to.to_string(),
                ],
            )
            .await
            .expect("fill");
        from = to + 1;
    }
}

async fn xlen(bus: &Bus, key: &str) -> u64 {
    bus.redis().xlen(key).await.expect("XLEN")
}

async fn first_id(bus: &Bus, key: &str) -> String {
    let first: Vec<(String, Value)> = bus
        .redis()
        .xrange(key, "-", "+", Some(1))
        .await
        .expect("XRANGE");
    first
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_default()
}

async fn create_group_at(bus: &Bus, key: &str, group: &str, at: &str) {
    let _: Value = bus
        .redis()
        .xgroup_create(key, group, at, true)
        .await
        .expect("XGROUP CREATE");
}

/// Whole nodes go in batches and the node straddling the cut goes entry by entry, so the result
/// is exact: the minimum count to the entry, and the first entry a lagging group still needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_a_long_stream_in_steps_is_exact() {
    let env = TestEnv::new("trimexact").await;
    let key = env.bus.stream_key("long").expect("key");
    fill(&env.bus, &key, 30_000, Some(1_000)).await;
    // A group that has read and acknowledged everything: only the minimum count stays.
    create_group_at(&env.bus, &key, "done", "$").await;
    let keep = Retention::new().min_count(12_345);
    let removed = env.bus.trim("long", keep).await.expect("trim");
    assert_eq!(removed, 30_000 - 12_345);
    assert_eq!(xlen(&env.bus, &key).await, 12_345);
    assert_eq!(
        first_id(&env.bus, &key).await,
        format!("1000-{}", 30_000 - 12_345 + 1)
    );
    // A group that has read up to entry 25 000: it still needs 25 001 and later, whatever the
    // minimum count says.
    create_group_at(&env.bus, &key, "lagging", "1000-25000").await;
    let keep = Retention::new().min_count(5);
    let removed = env.bus.trim("long", keep).await.expect("trim");
    assert_eq!(removed, 25_000 - (30_000 - 12_345));
    assert_eq!(xlen(&env.bus, &key).await, 5_000);
    assert_eq!(first_id(&env.bus, &key).await, "1000-25001");
    // Nothing more to do: a second trim removes nothing.
    assert_eq!(env.bus.trim("long", keep).await.expect("trim"), 0);
}

/// No command a trim sends blocks Redis for long, however long the stream: with the slow log
/// threshold at 50 ms, trimming 300 000 acknowledged entries down to a minimum count of 150 000
/// logs nothing. (The earlier script walked the kept entries with `XREVRANGE` inside Lua and
/// blocked Redis for hundreds of milliseconds here, seconds on a million entries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_a_long_stream_never_blocks_redis() {
    let Some(redis) = OwnRedis::start_or_skip("trimblock") else {
        return;
    };
    let bus = redis.bus(Some(Duration::from_secs(30))).await;
    let key = bus.stream_key("long").expect("key");
    fill(&bus, &key, 300_000, None).await;
    create_group_at(&bus, &key, "done", "$").await;
    let config = |name: &'static str, value: &'static str| {
        let bus = bus.clone();
        async move {
            let _: Value = bus
                .redis()
                .custom(
                    fred::types::CustomCommand::new_static("CONFIG", None, false),
                    vec!["SET", name, value],
                )
                .await
                .expect("CONFIG SET");
        }
    };
    config("slowlog-log-slower-than", "50000").await;
    let slowlog = |sub: &'static str| {
        let bus = bus.clone();
        async move {
            let v: Value = bus
                .redis()
                .custom(
                    fred::types::CustomCommand::new_static("SLOWLOG", None, false),
                    vec![sub],
                )
                .await
                .expect("SLOWLOG");
            v
        }
    };
    slowlog("RESET").await;
    let keep = Retention::new().min_count(150_000);
    let removed = bus.trim("long", keep).await.expect("trim");
    assert_eq!(removed, 150_000);
    assert_eq!(xlen(&bus, &key).await, 150_000);
    let slow = slowlog("GET").await;
    assert!(
        matches!(&slow, Value::Array(a) if a.is_empty()),
        "commands slower than 50 ms while trimming: {slow:?}"
    );
}

/// A stream nobody subscribes to keeps only what is younger than `without_groups`; `None` keeps
/// everything; a stream with a group is bounded by what the group needs, not by that age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_groups_keeps_what_is_younger_than_its_max_age() {
    let env = TestEnv::new("trimorphan").await;
    let now = redis_now_ms(&env.bus).await;
    let two_hours_ago = now - 2 * 3600 * 1000;
    let a_minute_ago = now - 60 * 1000;
    for stream in ["audit", "orders"] {
        let key = env.bus.stream_key(stream).expect("key");
        fill(&env.bus, &key, 500, Some(two_hours_ago)).await;
        fill(&env.bus, &key, 300, Some(a_minute_ago)).await;
    }
    let audit = env.bus.stream_key("audit").expect("key");
    let orders = env.bus.stream_key("orders").expect("key");
    // "orders" has a group that has read nothing: it needs every entry.
    create_group_at(&env.bus, &orders, "billing", "0").await;

    let keep_all = Retention::new().without_groups(None);
    assert_eq!(env.bus.trim("audit", keep_all).await.expect("trim"), 0);
    // The default keeps a week.
    assert_eq!(
        env.bus
            .trim("audit", Retention::default())
            .await
            .expect("trim"),
        0
    );
    let an_hour = Retention::new().without_groups(Some(Duration::from_secs(3600)));
    let trimmed = env.bus.trim_all(an_hour).await.expect("trim all");
    assert_eq!(trimmed, vec![("audit".to_owned(), 500)]);
    assert_eq!(xlen(&env.bus, &audit).await, 300);
    assert_eq!(
        first_id(&env.bus, &audit).await,
        format!("{a_minute_ago}-1")
    );
    assert_eq!(xlen(&env.bus, &orders).await, 800);
}
