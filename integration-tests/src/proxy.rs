//! A fault-injecting TCP proxy to put between clients (or worker processes) and Redis.
//!
//! [`FaultProxy`] listens on a free loopback port and forwards every client connection to the
//! upstream address. Its controls (latency, blackhole, reset, refuse, lose one reply) are plain
//! sync methods, callable from any thread, and apply to existing and new connections alike.
//!
//! The proxy runs on its own thread with its own single-threaded tokio runtime, so it keeps
//! forwarding while a test's runtime is blocked or busy, and works from sync code. Dropping the
//! proxy stops that runtime (closing the listener and every connection) and joins the thread.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// How long a connection that triggered [`FaultProxy::lose_reply_after`] waits for the server's
/// first reply bytes before it is cut anyway.
const REPLY_WAIT: Duration = Duration::from_millis(200);

/// Bytes read per chunk.
const CHUNK: usize = 16 * 1024;

/// Server→client chunks waiting out their latency, per connection (back-pressure beyond that).
const IN_FLIGHT: usize = 64;

/// A TCP proxy on `127.0.0.1:<free port>` that forwards to one upstream address and injects
/// faults on demand. Stops, closing every connection, when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it tells the proxy thread to stop.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// State shared by the handle and the proxy's tasks; read on every chunk, so controls apply to
/// connections already open.
#[derive(Debug)]
struct Shared {
    latency_nanos: AtomicU64,
    blackholed: AtomicBool,
    refusing: AtomicBool,
    /// Bumped by `reset_all`; every connection watches it.
    resets: watch::Sender<u64>,
    /// The armed lose-reply fault, taken by the first connection that matches it.
    armed: Mutex<Option<Arc<LoseState>>>,
    accepted: AtomicU64,
    open: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port. Returns once it accepts connections.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency_nanos: AtomicU64::new(0),
            blackholed: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            resets: watch::Sender::new(0),
            armed: Mutex::new(None),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                // The runtime is built, used and dropped on this thread only: dropping a runtime
                // inside a test's async context would panic.
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let _ = ready_tx.send(Ok(()));
                            accept_loop(listener, upstream, thread_shared, stop_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                // Dropping `rt` here cancels every connection task, closing its sockets.
            })?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("fault proxy thread exited early")));
        let proxy = FaultProxy {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        // On error, dropping `proxy` joins the thread, which has already returned.
        ready.map(|()| proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>`, the proxy as a Redis URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays every server→client chunk by `latency` from the moment the proxy read it (replies
    /// keep their order). `Duration::ZERO` turns it off. Client→server bytes are not delayed.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Starts a network partition: bytes read in either direction are discarded (not buffered),
    /// while sockets stay open. New connections are accepted and blackholed too. A client whose
    /// bytes vanished typically times out and reconnects. Connection closes (EOF) still pass.
    pub fn blackhole(&self) {
        self.shared.blackholed.store(true, Ordering::Relaxed);
    }

    /// Ends a [`blackhole`](Self::blackhole): bytes read from now on are forwarded again. What
    /// was discarded stays lost.
    pub fn heal(&self) {
        self.shared.blackholed.store(false, Ordering::Relaxed);
    }

    /// Abruptly closes every current connection, both the client and the upstream side, with a
    /// TCP reset (`SO_LINGER` 0), so peers see `ECONNRESET` rather than a clean EOF. Connections
    /// still in the listen backlog (not yet accepted by the proxy) are not affected; make a round
    /// trip first to be sure a connection is established.
    pub fn reset_all(&self) {
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
    }

    /// Arms a one-shot fault: the first client→server chunk containing `pattern` is forwarded
    /// to the server, then everything the server sends back on that connection is discarded and
    /// the connection is reset, as soon as the first reply bytes arrive (or after 200 ms). This
    /// simulates "the command ran on Redis but its reply was lost with the connection".
    ///
    /// The pattern is searched within one read chunk only (a command split across two TCP reads
    /// does not match; small commands on loopback arrive in one). An empty pattern matches the
    /// next chunk. Arming again replaces a fault that has not fired yet (its handle never fires).
    pub fn lose_reply_after(&self, pattern: &[u8]) -> LoseReply {
        let state = Arc::new(LoseState {
            pattern: pattern.to_vec(),
            fired: watch::Sender::new(false),
        });
        *lock(&self.shared.armed) = Some(Arc::clone(&state));
        LoseReply { state }
    }

    /// While `true`, new connections are accepted and immediately reset; existing ones are kept.
    pub fn refuse(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::Relaxed);
    }

    /// Client connections accepted so far, refused ones included.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Client connections currently being proxied.
    pub fn connections_open(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Handle on a fault armed by [`FaultProxy::lose_reply_after`].
#[derive(Debug, Clone)]
pub struct LoseReply {
    state: Arc<LoseState>,
}

struct LoseState {
    pattern: Vec<u8>,
    /// Becomes `true` once the matching command was forwarded and its connection reset.
    fired: watch::Sender<bool>,
}

impl fmt::Debug for LoseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoseState")
            .field("pattern", &String::from_utf8_lossy(&self.pattern))
            .field("fired", &*self.fired.borrow())
            .finish()
    }
}

impl LoseReply {
    /// Whether the fault happened: the command was forwarded and its connection reset.
    pub fn fired(&self) -> bool {
        *self.state.fired.borrow()
    }

    /// Waits until the fault has happened; `false` if it has not within `timeout`.
    /// Needs a tokio runtime with the time driver (any test runtime).
    pub async fn wait_fired(&self, timeout: Duration) -> bool {
        let mut fired = self.state.fired.subscribe();
        // `wait_for` only fails when the sender is gone, and `self.state` owns it.
        tokio::time::timeout(timeout, fired.wait_for(|&f| f))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Locks a mutex, ignoring poisoning (the data is a plain `Option`, always consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // E.g. out of file descriptors: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if shared.refusing.load(Ordering::Relaxed) {
            abort(&client);
            continue;
        }
        // Subscribed here, synchronously, so a `reset_all` after the accept always reaches it.
        let resets = shared.resets.subscribe();
        let open = OpenGuard::new(&shared);
        tokio::spawn(serve(client, upstream, Arc::clone(&shared), resets, open));
    }
}

/// Per-connection fault state, shared by its two directions.
#[derive(Default)]
struct Conn {
    /// The lose-reply fault this connection triggered: its replies are discarded from then on.
    lost: OnceLock<Arc<LoseState>>,
    /// Signalled when `lost` is set.
    triggered: Notify,
    /// Signalled when reply bytes arrived (and were discarded) after `lost` was set.
    reply_seen: Notify,
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(Arc::clone(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proxies one client connection until both sides closed cleanly, or resets both sides on an
/// error, a `reset_all`, or a lose-reply fault.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut resets: watch::Receiver<u64>,
    _open: OpenGuard,
) {
    let conn = Conn::default();
    let mut server = None;
    let cut = async {
        conn.triggered.notified().await;
        let _ = tokio::time::timeout(REPLY_WAIT, conn.reply_seen.notified()).await;
    };
    let clean = tokio::select! {
        r = forward(&mut client, &mut server, upstream, &shared, &conn) => r.is_ok(),
        _ = resets.changed() => false,
        () = cut => false,
    };
    if !clean || conn.lost.get().is_some() {
        abort(&client);
        if let Some(server) = &server {
            abort(server);
        }
    }
    drop(client);
    drop(server);
    if let Some(fault) = conn.lost.get() {
        fault.fired.send_replace(true);
    }
}

/// Connects upstream and pumps both directions; `Ok` once both reached EOF.
async fn forward(
    client: &mut TcpStream,
    server: &mut Option<TcpStream>,
    upstream: SocketAddr,
    shared: &Shared,
    conn: &Conn,
) -> io::Result<()> {
    let server = server.insert(TcpStream::connect(upstream).await?);
    // Small replies should not wait for Nagle: latency must be only what we add.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.split();
    let (server_r, server_w) = server.split();
    tokio::try_join!(
        client_to_server(client_r, server_w, shared, conn),
        server_to_client(server_r, client_w, shared, conn),
    )?;
    Ok(())
}

async fn client_to_server(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    conn: &Conn,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let chunk = &buf[..n];
        if shared.blackholed.load(Ordering::Relaxed) {
            continue;
        }
        if conn.lost.get().is_none() {
            if let Some(fault) = take_matching_fault(shared, chunk) {
                // Set before forwarding, so the reply cannot slip through.
                let _ = conn.lost.set(fault);
                conn.triggered.notify_one();
            }
        }
        to.write_all(chunk).await?;
    }
}

/// Takes the armed lose-reply fault if `chunk` contains its pattern.
fn take_matching_fault(shared: &Shared, chunk: &[u8]) -> Option<Arc<LoseState>> {
    let mut armed = lock(&shared.armed);
    let pattern = &armed.as_ref()?.pattern;
    let matches = pattern.is_empty()
        || chunk
            .windows(pattern.len())
            .any(|w| w == pattern.as_slice());
    if matches {
        armed.take()
    } else {
        None
    }
}

/// Reads replies, stamps each chunk with its delivery time, and writes it then: a reader and a
/// writer joined by a channel, so latency delays each chunk without adding up across chunks.
async fn server_to_client(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    conn: &Conn,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(()); // dropping `tx` lets the writer finish and close
            }
            if conn.lost.get().is_some() {
                conn.reply_seen.notify_one();
                continue;
            }
            if shared.blackholed.load(Ordering::Relaxed) {
                continue;
            }
            let latency = Duration::from_nanos(shared.latency_nanos.load(Ordering::Relaxed));
            if tx
                .send((Instant::now() + latency, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(()); // the writer failed; `try_join!` reports its error
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Makes closing `stream` send a TCP reset instead of a FIN (best effort).
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
