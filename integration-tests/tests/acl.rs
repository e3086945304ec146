//! Credentials and transport: a least-privilege ACL user is enough (the rule the README documents,
//! applied to a real `redis-server`, lets every feature work and refuses keys outside the
//! prefix), and a TLS URL is never silently downgraded to plaintext.

use integration_tests::fixtures::Order;
use std::time::Duration;

use bus_core::testing::RedisServer;
use bus_core::{subscriber_fn, Bus, HandlerError, PublishOptions, Retention, SubscriberOptions};
use fred::prelude::*;
use fred::types::Value;
use integration_tests::Recorder;

/// The commands Streambus sends (the README's ACL rule lists the same).
pub const COMMANDS: &str = "+ping +time +xadd +xreadgroup +xack +xclaim +xautoclaim +xpending \
    +xgroup|create +xgroup|delconsumer +xinfo|groups +xinfo|consumers +xinfo|stream +xrange \
    +xrevrange +xlen +xtrim +xdel +eval +evalsha +script|load +hset +hget +hdel +hgetall +hmget \
    +zadd +zrangebyscore +zrem +zcard +set +get +del +unlink +pexpire +pttl +exists +rename +scan \
    +publish +subscribe +unsubscribe +client|id +client|unblock";

async fn admin(url: &str) -> Client {
    let c = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("client");
    c.init().await.expect("connect");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_its_prefix_runs_every_feature_and_nothing_else() {
    if !bus_core::testing::redis_server_available() {
        eprintln!("skipping: needs redis-server on PATH");
        return;
    }
    integration_tests::init_tracing();
    let server = RedisServer::builder().start().expect("redis-server");
    let root = admin(&server.url()).await;
    let prefix = "shop";
    let rule =
        format!("on >app-pw resetkeys ~{prefix}:* resetchannels &{prefix}:* -@all {COMMANDS}");
    let mut args: Vec<&str> = vec!["SETUSER", "app"];
    args.extend(rule.split_whitespace());
    let _: Value = root
        .custom(
            fred::types::CustomCommand::new_static("ACL", None, false),
            args,
        )
        .await
        .expect("ACL SETUSER");
    let url = format!("redis://app:app-pw@127.0.0.1:{}", server.port());
    // INFO and CONFIG are not granted: connecting still works.
    let bus = Bus::builder()
        .prefix(prefix)
        .connect(&url)
        .await
        .expect("a least-privilege user connects");

    // An entry a dead consumer left pending: the scanner must reclaim it (XAUTOCLAIM, the take
    // script).
    let key = format!("{prefix}:{{orders}}:stream");
    let _: Value = root
        .xgroup_create(key.as_str(), "billing", "0", true)
        .await
        .expect("group");
    bus.publish(&Order { n: 6 }).await.expect("publish");
    let _: Value = root
        .xreadgroup("billing", "dead", Some(1), None, false, key.as_str(), ">")
        .await
        .expect("read as dead");

    let rec = Recorder::new();
    let rc = rec.clone();
    let sub = subscriber_fn(
        SubscriberOptions::new("billing")
            .track_status(true)
            .max_attempts(2)
            .backoff_min(Duration::from_millis(10))
            .backoff_max(Duration::from_millis(20))
            .visibility_timeout(Duration::from_millis(500)),
        move |o: Order, ctx| {
            let rc = rc.clone();
            async move {
                rc.record(format!("{}:{}", o.n, ctx.attempt()));
                match o.n {
                    0 => Err(HandlerError::reject("no")),
                    // Slower than the visibility timeout: only lease renewal keeps it ours.
                    5 => {
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                        Ok(5)
                    }
                    1 if ctx.attempt() == 1 => Err(HandlerError::retry("once")),
                    _ => Ok(o.n),
                }
            }
        },
    );
    let w = bus
        .worker()
        .move_delayed_every(Duration::from_millis(50))
        .subscribe(sub)
        .start()
        .await
        .expect("worker starts");
    let rejected = bus.publish(&Order { n: 0 }).await.expect("publish");
    bus.publish(&Order { n: 1 }).await.expect("publish");
    bus.publish_with(
        &Order { n: 2 },
        PublishOptions::new().dedup("o-2", Duration::from_secs(60)),
    )
    .await
    .expect("dedup publish");
    bus.publish_after(&Order { n: 3 }, Duration::from_millis(50))
        .await
        .expect("delayed publish");
    let answer: u64 = bus
        .request(&Order { n: 4 }, "billing", Duration::from_secs(10))
        .await
        .expect("request (status, Pub/Sub)");
    assert_eq!(answer, 4);
    bus.publish(&Order { n: 5 }).await.expect("publish");
    rec.wait_for(Duration::from_secs(10), "every event", |m| {
        ["0:1", "1:2", "2:1", "3:1", "5:1", "6:1"]
            .iter()
            .all(|k| m.contains_key(*k))
    })
    .await;
    assert!(
        !rec.snapshot().contains_key("5:2"),
        "the slow event lost its lease"
    );
    let dead = bus
        .wait_for::<Order>(&rejected.event_id, "billing", Duration::from_secs(10))
        .await
        .expect("wait_for the rejected event");
    assert_eq!(dead.state, bus_core::State::Dead);
    let dlq = bus.dead_letters("orders", "billing").expect("dlq");
    assert_eq!(dlq.count().await.expect("count"), 1);
    assert_eq!(dlq.replay_all().await.expect("replay"), 1);
    assert!(bus
        .streams()
        .await
        .expect("streams")
        .contains(&"orders".to_owned()));
    bus.inspect("orders").await.expect("inspect");
    bus.trim("orders", Retention::default())
        .await
        .expect("trim");
    w.shutdown().await.expect("shutdown");

    // Outside its prefix the user can do nothing.
    let app = admin(&url).await;
    let refused: Result<Value, _> = app.set("other:key", "x", None, None, false).await;
    let err = refused.expect_err("a key outside the prefix must be refused");
    assert!(err.details().starts_with("NOPERM"), "{err:?}");
    let refused: Result<Value, _> = app
        .xadd("other:{orders}:stream", false, None, "*", ("p", "x"))
        .await;
    assert!(refused.is_err(), "XADD outside the prefix must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_never_falls_back_to_plaintext() {
    // A plain server that would accept a plaintext connection (and the password in clear).
    let url = integration_tests::redis_url();
    let tls_url = url.replacen("redis://", "rediss://user:pw@", 1);
    let r = Bus::builder()
        .connect_timeout(Duration::from_secs(3))
        .connect(&tls_url)
        .await;
    match r {
        Ok(_) => panic!("a rediss:// URL connected to a plaintext server"),
        Err(e) => assert!(!e.to_string().contains(":pw@"), "the password leaked: {e}"),
    }
}
