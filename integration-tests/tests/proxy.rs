//! The fault proxy against a real Redis: each control does what it says, on raw RESP clients
//! (deterministic: one command, one reply) and on a fred client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use fred::prelude::*;
use integration_tests::proxy::FaultProxy;
use integration_tests::{eventually, redis_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(5);
/// How long a reply that must not come is waited for.
const SILENCE: Duration = Duration::from_millis(300);

/// `host:port` of the test Redis, from its URL.
fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port
        .to_socket_addrs()
        .expect("resolve the Redis address")
        .next()
        .expect("an address for Redis")
}

fn start_proxy() -> FaultProxy {
    FaultProxy::start(redis_addr()).expect("start the fault proxy")
}

/// A fred client on the real Redis, bypassing the proxy.
async fn direct_client() -> Client {
    let config = Config::from_url(&redis_url()).expect("Redis URL");
    let client = Builder::from_config(config).build().expect("fred client");
    client.init().await.expect("connect to Redis");
    client
}

/// A minimal RESP client: sends a command, reads exactly one simple/integer/bulk reply.
struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    async fn connect(addr: SocketAddr) -> Resp {
        Resp::try_connect(addr).await.expect("connect")
    }

    /// Connects, panicking unless the connect completes (or fails) within [`PROMPT`].
    async fn try_connect(addr: SocketAddr) -> io::Result<Resp> {
        let stream = tokio::time::timeout(PROMPT, TcpStream::connect(addr))
            .await
            .expect("connect in time")?;
        Ok(Resp {
            stream,
            buf: Vec::new(),
        })
    }

    async fn send(&mut self, args: &[&str]) -> io::Result<()> {
        self.stream.write_all(&encode(args)).await
    }

    /// One reply, `Ok(None)` on EOF.
    async fn reply(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(len) = reply_len(&self.buf) {
                let reply = self.buf.drain(..len).collect::<Vec<u8>>();
                return Ok(Some(String::from_utf8_lossy(&reply).into_owned()));
            }
            let mut chunk = [0; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and returns its reply, panicking unless it comes within [`PROMPT`].
    async fn call(&mut self, args: &[&str]) -> String {
        self.send(args).await.expect("send a command");
        tokio::time::timeout(PROMPT, self.reply())
            .await
            .expect("a reply in time")
            .expect("read a reply")
            .expect("a reply, not EOF")
    }

    /// Asserts that no reply arrives within [`SILENCE`] (the connection stays open).
    async fn assert_silent(&mut self) {
        if let Ok(r) = tokio::time::timeout(SILENCE, self.reply()).await {
            panic!("expected no reply, got {r:?}");
        }
    }

    /// Asserts that the connection ends (EOF or reset) within [`PROMPT`] without a reply.
    async fn assert_closed(&mut self) {
        match tokio::time::timeout(PROMPT, self.reply()).await {
            Ok(Ok(None)) | Ok(Err(_)) => {}
            Ok(Ok(Some(r))) => panic!("expected the connection to close, got reply {r:?}"),
            Err(_) => panic!("the connection did not close within {PROMPT:?}"),
        }
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Length of the first complete reply in `buf` (simple string, error, integer or bulk string).
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    if buf.first() != Some(&b'$') {
        return Some(line_end);
    }
    let len: i64 = std::str::from_utf8(&buf[1..line_end - 2])
        .ok()?
        .parse()
        .ok()?;
    let total = if len < 0 {
        line_end
    } else {
        line_end + usize::try_from(len).ok()? + 2
    };
    (buf.len() >= total).then_some(total)
}

fn unique_key(label: &str) -> String {
    format!("t-proxy-{label}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn passes_traffic_through_and_counts_connections() {
    let proxy = start_proxy();
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}", proxy.addr().port())
    );

    let mut c = Resp::connect(proxy.addr()).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    // Larger than one read chunk both ways: bytes arrive intact and in order.
    let big: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(
        c.call(&["ECHO", &big]).await,
        format!("${}\r\n{big}\r\n", big.len())
    );
    assert_eq!(proxy.connections_accepted(), 1);
    assert_eq!(proxy.connections_open(), 1);

    drop(c);
    let p = &proxy;
    eventually(PROMPT, "the closed connection to be gone", || async move {
        p.connections_open() == 0
    })
    .await;

    // A real client (handshake, pipelining) works through it too.
    let config = Config::from_url(&proxy.url()).expect("proxy URL");
    let client = Builder::from_config(config).build().expect("fred client");
    client.init().await.expect("connect through the proxy");
    let pong: String = client.ping(None).await.expect("PING through the proxy");
    assert_eq!(pong, "PONG");
    client.quit().await.expect("QUIT");
    assert_eq!(proxy.connections_accepted(), 2);
}

#[tokio::test]
async fn latency_delays_replies_on_open_connections() {
    let proxy = start_proxy();
    let mut c = Resp::connect(proxy.addr()).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");

    let latency = Duration::from_millis(300);
    proxy.set_latency(latency);
    let started = Instant::now();
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
    let took = started.elapsed();
    assert!(
        took >= latency,
        "reply took {took:?}, latency is {latency:?}"
    );

    proxy.set_latency(Duration::ZERO);
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test]
async fn blackhole_discards_bytes_until_heal() {
    let proxy = start_proxy();
    let mut old = Resp::connect(proxy.addr()).await;
    assert_eq!(old.call(&["PING"]).await, "+PONG\r\n");

    proxy.blackhole();
    old.send(&["PING"]).await.expect("send into the blackhole");
    old.assert_silent().await;
    // New connections are accepted, and blackholed too.
    let mut new = Resp::connect(proxy.addr()).await;
    new.send(&["PING"]).await.expect("send into the blackhole");
    new.assert_silent().await;

    proxy.heal();
    let mut fresh = Resp::connect(proxy.addr()).await;
    assert_eq!(fresh.call(&["PING"]).await, "+PONG\r\n");
    // Both connections survived, and their blackholed PINGs were discarded, not delayed: the
    // first reply now is the ECHO's, and nothing follows it.
    assert_eq!(
        old.call(&["ECHO", "after-heal"]).await,
        "$10\r\nafter-heal\r\n"
    );
    assert_eq!(new.call(&["ECHO", "new"]).await, "$3\r\nnew\r\n");
    old.assert_silent().await;
    assert_eq!(proxy.connections_open(), 3);
}

#[tokio::test]
async fn reset_all_closes_every_connection() {
    let proxy = start_proxy();
    let mut a = Resp::connect(proxy.addr()).await;
    let mut b = Resp::connect(proxy.addr()).await;
    // A round trip each, so both are established through the proxy before the reset.
    assert_eq!(a.call(&["PING"]).await, "+PONG\r\n");
    assert_eq!(b.call(&["PING"]).await, "+PONG\r\n");

    proxy.reset_all();
    a.assert_closed().await;
    b.assert_closed().await;
    let p = &proxy;
    eventually(PROMPT, "no open connections", || async move {
        p.connections_open() == 0
    })
    .await;

    let mut c = Resp::connect(proxy.addr()).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test]
async fn lose_reply_after_runs_the_command_but_loses_its_reply() {
    let proxy = start_proxy();
    let redis = direct_client().await;
    let key = unique_key("lose");

    let fault = proxy.lose_reply_after(b"INCR");
    let mut c = Resp::connect(proxy.addr()).await;
    assert_eq!(
        c.call(&["PING"]).await,
        "+PONG\r\n",
        "no fault before the pattern"
    );
    assert!(!fault.fired());
    c.send(&["INCR", &key]).await.expect("send INCR");
    c.assert_closed().await;
    let fired = fault.wait_fired(PROMPT).await;

    let value: Option<i64> = redis.get(&key).await.expect("GET");
    // One-shot: the next INCR through the proxy is answered.
    let mut again = Resp::connect(proxy.addr()).await;
    let second = again.call(&["INCR", &key]).await;
    let _: i64 = redis.del(&key).await.expect("DEL");

    assert!(fired, "the fault did not fire");
    assert_eq!(value, Some(1), "the INCR whose reply was lost ran on Redis");
    assert_eq!(second, ":2\r\n");
}

#[tokio::test]
async fn refuse_closes_new_connections_only() {
    let proxy = start_proxy();
    let mut old = Resp::connect(proxy.addr()).await;
    assert_eq!(old.call(&["PING"]).await, "+PONG\r\n");

    proxy.refuse(true);
    // The proxy's reset can beat the end of the connect, or the write, failing them; either way
    // no reply comes.
    if let Ok(mut refused) = Resp::try_connect(proxy.addr()).await {
        let _ = refused.send(&["PING"]).await;
        refused.assert_closed().await;
    }
    assert_eq!(proxy.connections_accepted(), 2);
    assert_eq!(old.call(&["PING"]).await, "+PONG\r\n");

    proxy.refuse(false);
    let mut c = Resp::connect(proxy.addr()).await;
    assert_eq!(c.call(&["PING"]).await, "+PONG\r\n");
}

/// Usable without any async runtime, and dropping it closes its connections and its port.
#[test]
fn works_from_sync_code_and_stops_on_drop() {
    let proxy = start_proxy();
    let addr = proxy.addr();
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(PROMPT)).expect("read timeout");
    c.write_all(&encode(&["PING"])).expect("send PING");
    let mut pong = [0; 7];
    c.read_exact(&mut pong).expect("read PONG");
    assert_eq!(&pong, b"+PONG\r\n");

    drop(proxy);
    let mut rest = [0; 16];
    match c.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut => {}
        other => panic!("expected the connection to close on drop, got {other:?}"),
    }
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the proxy still accepts after drop"
    );
}
