//! Helpers shared by several test files: what Redis says about a group (pending entries, dead
//! letters, XINFO GROUPS, attempt records), setup steps written with raw commands (a group, a
//! consumer's deliveries, ownership moved with `XCLAIM … JUSTID`), an own `redis-server` for fault
//! tests, and small handler building blocks.

use bus_core::testing::RedisAccess;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus_core::{
    subscriber_fn, Bus, Context, Event, HandlerError, Subscriber, SubscriberOptions, WorkerHandle,
};
use fred::prelude::*;
use fred::types::Value;

use crate::proxy::FaultProxy;
use crate::{free_port, RedisServer, TestEnv};
use crate::{init_tracing, pending_count, redis_server_available, unique_prefix, Recorder};

// ---------------------------------------------------------------------------------------------
// What Redis says

/// Entries of `stream` delivered to `group` and not yet acknowledged; panics when Redis does not
/// answer.
pub async fn pending(bus: &Bus, stream: &str, group: &str) -> u64 {
    pending_count(bus, stream, group).await.expect("XPENDING")
}

/// How many dead letters `group` has for `stream`.
pub async fn dead_letter_count(bus: &Bus, stream: &str, group: &str) -> u64 {
    bus.dead_letters(stream, group)
        .expect("dlq")
        .count()
        .await
        .expect("XLEN")
}

/// The group's row of XINFO GROUPS, `None` when there is no such group (or no answer).
pub async fn group_info(bus: &Bus, stream: &str, group: &str) -> Option<HashMap<String, Value>> {
    let key = bus.stream_key(stream).expect("key");
    let groups: Vec<HashMap<String, Value>> = bus.redis().xinfo_groups(key.as_str()).await.ok()?;
    groups
        .into_iter()
        .find(|g| g.get("name").and_then(Value::as_string).as_deref() == Some(group))
}

/// The group's last delivered entry id (XINFO GROUPS).
pub async fn last_delivered(bus: &Bus, stream: &str, group: &str) -> Option<String> {
    group_info(bus, stream, group)
        .await?
        .get("last-delivered-id")
        .and_then(Value::as_string)
}

/// One entry's row in the group's pending list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u64,
}

/// The pending row of entry `id`, `None` when nobody has it pending.
pub async fn pending_entry(bus: &Bus, stream: &str, group: &str, id: &str) -> Option<PendingEntry> {
    let key = bus.stream_key(stream).expect("key");
    let rows: Vec<(String, String, u64, u64)> = bus
        .redis()
        .xpending(key.as_str(), group, (id, id, 1))
        .await
        .expect("XPENDING");
    rows.into_iter().next().map(|r| PendingEntry {
        consumer: r.1,
        idle_ms: r.2,
        deliveries: r.3,
    })
}

/// The ids of the group's pending entries (normal lane), oldest first (at most 1000).
pub async fn pending_ids(bus: &Bus, stream: &str, group: &str) -> Vec<String> {
    let key = bus.stream_key(stream).expect("key");
    let rows: Vec<(String, String, u64, u64)> = bus
        .redis()
        .xpending(key.as_str(), group, ("-", "+", 1000))
        .await
        .expect("XPENDING");
    rows.into_iter().map(|r| r.0).collect()
}

/// Redis's clock (`TIME`), Unix ms.
pub async fn redis_now_ms(bus: &Bus) -> u64 {
    let (s, us): (u64, u64) = bus
        .redis()
        .custom(
            fred::types::CustomCommand::new_static("TIME", None, false),
            Vec::<String>::new(),
        )
        .await
        .expect("TIME");
    s * 1000 + us / 1000
}

/// The group's attempt-record hash (normal lane) for `stream`:
/// `<prefix>:{stream}:retry:normal:<group>`.
pub fn attempt_records_key(prefix: &str, stream: &str, group: &str) -> String {
    format!("{prefix}:{{{stream}}}:retry:normal:{group}")
}

// ---------------------------------------------------------------------------------------------
// Raw setup steps

/// Creates `group` on `stream` (from the start, creating the stream if need be).
pub async fn create_group(bus: &Bus, stream: &str, group: &str) {
    let key = bus.stream_key(stream).expect("key");
    let _: Value = bus
        .redis()
        .xgroup_create(key.as_str(), group, "0", true)
        .await
        .expect("XGROUP CREATE");
}

/// Lets `consumer` read up to `count` new entries of `stream` for `group`: they stay pending for
/// it (a consumer that never acknowledges, e.g. one that died).
pub async fn read_as(bus: &Bus, stream: &str, group: &str, consumer: &str, count: u64) {
    let key = bus.stream_key(stream).expect("key");
    let _: Value = bus
        .redis()
        .xreadgroup(group, consumer, Some(count), None, false, key.as_str(), ">")
        .await
        .expect("XREADGROUP");
}

/// Gives the pending entries `ids` to `consumer` with `XCLAIM … JUSTID` (no delivery counted),
/// optionally setting their idle time and delivery count.
pub async fn claim_for(
    bus: &Bus,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: Vec<&str>,
    idle_ms: Option<u64>,
    deliveries: Option<u64>,
) {
    let key = bus.stream_key(stream).expect("key");
    let _: Value = bus
        .redis()
        .xclaim(
            key.as_str(),
            group,
            consumer,
            0,
            ids,
            idle_ms,
            None,
            deliveries,
            false,
            true,
        )
        .await
        .expect("XCLAIM");
}

// ---------------------------------------------------------------------------------------------
// An own redis-server

/// A `redis-server` of one test's own (for faults that must not touch the shared server: a stall,
/// a proxy that loses replies), and a key prefix for the test.
#[derive(Debug)]
pub struct OwnRedis {
    pub server: RedisServer,
    pub prefix: String,
}

impl OwnRedis {
    /// Starts one; the prefix is `t-<label>-<random>`. Panics when it cannot.
    pub fn start(label: &str) -> OwnRedis {
        init_tracing();
        OwnRedis {
            server: RedisServer::start().expect("redis-server"),
            prefix: unique_prefix(&format!("t-{label}")),
        }
    }

    /// As [`start`](Self::start), or `None` (after a note) when there is no `redis-server` on
    /// `PATH`: the test is then skipped.
    pub fn start_or_skip(label: &str) -> Option<OwnRedis> {
        init_tracing();
        if !redis_server_available() {
            eprintln!("skipping: needs redis-server on PATH");
            return None;
        }
        Some(Self::start(label))
    }

    /// A fault proxy in front of the server.
    pub fn proxy(&self) -> FaultProxy {
        FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], self.server.port()))).expect("proxy")
    }

    /// A bus on the server under the test's prefix, with `command_timeout` (`None`: the client's
    /// default).
    pub async fn bus(&self, command_timeout: Option<Duration>) -> Bus {
        self.bus_on(&self.server.url(), command_timeout).await
    }

    /// As [`bus`](Self::bus), through `proxy`.
    pub async fn bus_via(&self, proxy: &FaultProxy, command_timeout: Option<Duration>) -> Bus {
        self.bus_on(&proxy.url(), command_timeout).await
    }

    async fn bus_on(&self, url: &str, command_timeout: Option<Duration>) -> Bus {
        let mut builder = Bus::builder().prefix(self.prefix.clone());
        if let Some(t) = command_timeout {
            builder = builder.command_timeout(t);
        }
        builder.connect(url).await.expect("connect")
    }
}

// ---------------------------------------------------------------------------------------------
// Workers and handlers

/// Starts a worker on `bus` with the one subscriber `sub`.
pub async fn start_worker(bus: &Bus, sub: impl Subscriber) -> WorkerHandle {
    bus.worker().subscribe(sub).start().await.expect("start")
}

/// A subscriber whose handler records `key(&event, &ctx)` in `rec` and succeeds.
pub fn recording<E: Event>(
    opts: SubscriberOptions,
    rec: &Recorder,
    key: impl Fn(&E, &Context) -> String + Send + Sync + 'static,
) -> impl Subscriber<Event = E> {
    let rec = rec.clone();
    subscriber_fn(opts, move |e: E, ctx| {
        let (rec, k) = (rec.clone(), key(&e, &ctx));
        async move {
            rec.record(k);
            Ok::<_, HandlerError>(())
        }
    })
}

/// Handlers running right now and the most ever running at once. Entered by a handler; the guard
/// leaves on drop, so an abandoned (dropped) handler future leaves too.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    pub fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// A handler's stay in a [`Gauge`]; leaves it on drop.
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestEnv {
    /// The attempt-record hash of `group` on `stream` under this test's prefix.
    pub fn attempt_records_key(&self, stream: &str, group: &str) -> String {
        attempt_records_key(&self.prefix, stream, group)
    }
}

/// A small deterministic PRNG (xorshift64*), so a run can be repeated with the same seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// TLS: a redis-server with certificates made by the openssl CLI

/// Runs the openssl CLI in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
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
pub fn ca_and_cert(dir: &Path, name: &str, ext: &str) {
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

/// A redis-server with a TLS port and certificates made for it (`server-ca.pem`, `client.pem`, …).
#[derive(Debug)]
pub struct TlsRedis {
    _server: RedisServer,
    tls_port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    /// A redis-server with a TLS port; `client_auth` makes client certificates mandatory.
    pub fn start(dir: &Path, client_auth: bool) -> TlsRedis {
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

    /// The `rediss://` URL of its TLS port.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// A file of its directory (certificates, keys).
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// The bytes of a file of its directory.
    pub fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(f)).expect("read PEM")
    }
}

/// Whether redis-server and the openssl CLI are there (the TLS tests skip otherwise).
pub fn tls_available() -> bool {
    let ok = bus_core::testing::redis_server_available()
        && Command::new("openssl").arg("version").output().is_ok();
    if !ok {
        eprintln!("skipping: needs redis-server (with TLS) and openssl on PATH");
    }
    ok
}
