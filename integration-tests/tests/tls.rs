//! TLS against a real `redis-server --tls-port`, with a CA, server and client certificates made by
//! the `openssl` CLI for each test: events flow over TLS, a wrong CA is a clear error, mutual TLS
//! works and is required when the server asks for it.

use std::time::Duration;

use bus_core::{subscriber_fn, Bus, Error, Event, SubscriberOptions, TlsOptions};
use integration_tests::procs::TempDir;
use integration_tests::support::{tls_available, TlsRedis};
use integration_tests::Recorder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "secure")]
struct Ping {
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_over_tls_and_a_wrong_ca_is_a_clear_error() {
    if !tls_available() {
        return;
    }
    let dir = TempDir::new("tls");
    let redis = TlsRedis::start(&dir.0, false);
    let tls = TlsOptions::new().ca_pem(redis.read("server-ca.pem"));
    let bus = Bus::builder()
        .prefix("tls")
        .tls(tls)
        .connect(&redis.url())
        .await
        .expect("connect over TLS");
    let rec = Recorder::new();
    let rc = rec.clone();
    let w = bus
        .worker()
        .subscribe(subscriber_fn(
            SubscriberOptions::new("g"),
            move |p: Ping, _| {
                let rc = rc.clone();
                async move { rc.record(p.n.to_string()) }
            },
        ))
        .start()
        .await
        .expect("worker over TLS");
    for n in 0..20 {
        bus.publish(&Ping { n }).await.expect("publish over TLS");
    }
    rec.wait_for(Duration::from_secs(10), "20 events over TLS", |m| {
        m.len() == 20
    })
    .await;
    w.shutdown().await.expect("shutdown");

    // Trusting another CA (the client CA did not sign the server's certificate).
    let wrong = TlsOptions::new().ca_pem(redis.read("client-ca.pem"));
    let r = Bus::builder()
        .tls(wrong)
        .connect_timeout(Duration::from_secs(3))
        .connect(&redis.url())
        .await;
    match r {
        Err(Error::Tls { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("a wrong CA must be a TLS error, got {other:?}"),
    }
    // Garbage instead of a CA is a configuration error before any connection.
    let r = Bus::builder()
        .tls(TlsOptions::new().ca_pem(b"not a pem".to_vec()))
        .connect(&redis.url())
        .await;
    assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_and_is_required_when_the_server_asks() {
    if !tls_available() {
        return;
    }
    let dir = TempDir::new("mtls");
    let redis = TlsRedis::start(&dir.0, true);
    let ca = redis.read("server-ca.pem");
    let without = Bus::builder()
        .tls(TlsOptions::new().ca_pem(ca.clone()))
        .connect_timeout(Duration::from_secs(3))
        .connect(&redis.url())
        .await;
    assert!(
        without.is_err(),
        "the server requires a client certificate: {without:?}"
    );
    let bus = Bus::builder()
        .prefix("mtls")
        .tls(
            TlsOptions::new()
                .ca_pem(ca)
                .client_cert_pem(redis.read("client.pem"), redis.read("client.key")),
        )
        .connect(&redis.url())
        .await
        .expect("connect with a client certificate");
    let p = bus
        .publish(&Ping { n: 1 })
        .await
        .expect("publish over mTLS");
    assert!(!p.entry_id.is_empty());
}
