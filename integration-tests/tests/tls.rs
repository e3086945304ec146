//! TLS against a real `redis-server --tls-port`, with a CA, server and client certificates made by
//! the `openssl` CLI for each test: events flow over TLS, a wrong CA is a clear error, mutual TLS
//! works and is required when the server asks for it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bus_core::testing::{free_port, RedisServer};
use bus_core::{subscriber_fn, Bus, Error, Event, SubscriberOptions, TlsOptions};
use integration_tests::procs::TempDir;
use integration_tests::Recorder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "secure")]
struct Ping {
    n: u64,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}-ca.pem`) and a certificate signed by it (`{name}.pem`, `{name}.key`).
fn ca_and_cert(dir: &Path, name: &str, ext: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = format!("{name}-ca");
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=streambus-test-ca",
    ];
    args.extend(ec);
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    args.extend(["-keyout", &ca_key, "-out", &ca_pem]);
    openssl(dir, &args);
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).expect("ext file");
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    args.extend(ec);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-extfile",
            &extfile,
        ],
    );
}

struct TlsRedis {
    _server: RedisServer,
    tls_port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    /// A redis-server with a TLS port; `client_auth` makes client certificates mandatory.
    fn start(dir: &Path, client_auth: bool) -> TlsRedis {
        ca_and_cert(dir, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
        ca_and_cert(dir, "client", "extendedKeyUsage=clientAuth\n");
        let tls_port = free_port().expect("port");
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let server = RedisServer::builder()
            .arg("--tls-port")
            .arg(tls_port.to_string())
            .arg("--tls-cert-file")
            .arg(path("server.pem"))
            .arg("--tls-key-file")
            .arg(path("server.key"))
            // Client certificates are checked against the client CA.
            .arg("--tls-ca-cert-file")
            .arg(path("client-ca.pem"))
            .arg("--tls-auth-clients")
            .arg(if client_auth { "yes" } else { "no" })
            .start()
            .expect("redis-server with TLS");
        TlsRedis {
            _server: server,
            tls_port,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(f)).expect("read PEM")
    }
}

fn available() -> bool {
    let ok = bus_core::testing::redis_server_available()
        && Command::new("openssl").arg("version").output().is_ok();
    if !ok {
        eprintln!("skipping: needs redis-server (with TLS) and openssl on PATH");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_over_tls_and_a_wrong_ca_is_a_clear_error() {
    if !available() {
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
    if !available() {
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
