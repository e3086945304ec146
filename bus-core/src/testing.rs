//! Test utilities (feature `test-util`): throwaway `redis-server` processes and key clean-up.
//!
//! ```no_run
//! use bus_core::testing::RedisServer;
//! let server = RedisServer::builder().appendonly(true).start()?;   // on a free loopback port
//! println!("{}", server.url());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::bus::Bus;
use crate::error::ClientResult;
use crate::error::Result;

/// True if a `redis-server` binary is on `PATH`.
pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (free when asked; another process may take it afterwards).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The raw Redis client under a [`Bus`], for tests and tools that set up or inspect keys
/// directly. Only with the `test-util` feature: applications talk to Redis through the bus.
///
/// ```no_run
/// # async fn demo(bus: bus_core::Bus) -> Result<(), Box<dyn std::error::Error>> {
/// use bus_core::testing::RedisAccess;
/// use fred::prelude::*;
/// let key = bus.stream_key("orders")?;
/// let len: u64 = bus.redis().xlen(key.as_str()).await?;
/// # let _ = len; Ok(()) }
/// ```
pub trait RedisAccess {
    /// The client the bus publishes with (one multiplexed connection).
    fn redis(&self) -> &fred::prelude::Client;
}

impl RedisAccess for Bus {
    fn redis(&self) -> &fred::prelude::Client {
        &self.conn.client
    }
}

/// A unique key prefix for one test or run: `<label>-<random>`.
pub fn unique_prefix(label: &str) -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{label}-{}", &r[..12])
}

/// Every key under the bus's prefix.
pub async fn keys_with_prefix(bus: &Bus) -> Result<Vec<String>> {
    let pattern = format!("{}:*", crate::names::escape_glob(bus.prefix()));
    crate::redis::scan_keys(&bus.conn.client, &pattern).await
}

/// Deletes every key under the bus's prefix. Returns how many were deleted.
pub async fn delete_prefix(bus: &Bus) -> Result<u64> {
    let mut deleted = 0;
    for k in keys_with_prefix(bus).await? {
        deleted += bus.conn.client.del::<u64, _>(k).await.client_err()?;
    }
    Ok(deleted)
}

/// Options for [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct RedisServerBuilder {
    appendonly: bool,
    appendfsync_always: bool,
    password: Option<String>,
    port: Option<u16>,
    dir: Option<PathBuf>,
    extra: Vec<String>,
}

impl RedisServerBuilder {
    /// Turns AOF persistence on (`appendfsync everysec`).
    #[must_use]
    pub fn appendonly(mut self, on: bool) -> Self {
        self.appendonly = on;
        self
    }

    /// With AOF, fsync every write (`appendfsync always`).
    #[must_use]
    pub fn fsync_always(mut self, on: bool) -> Self {
        self.appendfsync_always = on;
        self
    }

    /// Requires this password (`requirepass`).
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Uses this port instead of a free one (to restart a server on its old port).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Uses this data directory (kept on drop) instead of a fresh temporary one.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Extra `redis-server` arguments.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Starts the server and waits until it answers.
    pub fn start(self) -> io::Result<RedisServer> {
        let port = match self.port {
            Some(p) => p,
            None => free_port()?,
        };
        let (dir, owns_dir) = match &self.dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "streambus-redis-{}-{port}-{}",
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(["--logfile", "redis.log"])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args([
                "--appendfsync",
                if self.appendfsync_always {
                    "always"
                } else {
                    "everysec"
                },
            ]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let watchdog = spawn_watchdog(child.id())?;
        let mut server = RedisServer {
            child,
            watchdog: Some(watchdog),
            port,
            dir,
            owns_dir,
            builder: self,
        };
        server.wait_ready(Duration::from_secs(10))?;
        Ok(server)
    }
}

/// Kills the server if this process dies without dropping the [`RedisServer`] (panic=abort,
/// SIGKILL, statics that are never dropped): the watchdog waits for its stdin to close.
fn spawn_watchdog(pid: u32) -> io::Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read _ignored; kill -9 \"$0\" 2>/dev/null",
            &pid.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("watchdog has no stdin"))?;
    Ok((child, stdin))
}

/// A `redis-server` child process on a loopback port, killed (and its temporary directory
/// removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    port: u16,
    dir: PathBuf,
    owns_dir: bool,
    builder: RedisServerBuilder,
}

impl RedisServer {
    /// Options for a new server.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts a server with default options (no persistence).
    pub fn start() -> io::Result<Self> {
        Self::builder().start()
    }

    /// `redis://[:password@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.builder.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn signal(&self, sig: &str) -> io::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{sig} failed")))
        }
    }

    /// SIGKILLs the server (no shutdown, no final AOF rewrite) and waits for it to exit.
    pub fn kill(&mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the server again on the same port with the same data directory (after
    /// [`kill`](Self::kill)); with AOF on, it reloads its data.
    pub fn restart(&mut self) -> io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut next = self
            .builder
            .clone()
            .port(self.port)
            .dir(self.dir.clone())
            .start()?;
        std::mem::swap(&mut self.child, &mut next.child);
        std::mem::swap(&mut self.watchdog, &mut next.watchdog);
        // `next` now holds the dead process; dropping it must not delete our directory.
        next.owns_dir = false;
        Ok(())
    }

    /// SIGSTOPs the server (it stalls: connections stay open, nothing is answered).
    pub fn pause(&self) -> io::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONTs a paused server.
    pub fn resume(&self) -> io::Result<()> {
        self.signal("CONT")
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited with {status} (see {}/redis.log)",
                    self.dir.display()
                )));
            }
            if ping(self.port).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server did not answer in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a PING over a plain TCP connection; any reply (even `-NOAUTH`) means the server is up.
fn ping(port: u16) -> io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    if n > 0 && (buf[0] == b'+' || buf[0] == b'-') && !buf[..n].starts_with(b"-LOADING") {
        Ok(())
    } else {
        Err(io::Error::other("not ready"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((mut w, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = w.wait();
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
