//! Real worker processes for fault tests: the `test_worker` binary, its ledger, and signals.
//!
//! Each worker process appends to its own ledger file (one line per observation, written with
//! `O_APPEND` before the entry is acknowledged): `start <n> <attempt> <pid> <group>` when a
//! handler starts, `done <n> <attempt> <pid> <group>` when it finished its side effect.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bus_core::Event;
use serde::{Deserialize, Serialize};

/// The event the fault tests publish. Its fields steer the test worker's handler.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(stream = "tasks")]
pub struct Task {
    /// Unique per published task.
    pub n: u64,
    /// The handler sleeps this long.
    pub slow_ms: u64,
    /// The handler aborts the whole process (a poison pill).
    pub poison: bool,
    /// The handler returns an error on its first `fail_times` attempts.
    pub fail_times: u32,
    /// The handler hangs (never returns) on its first `hang_times` attempts: the subscriber's
    /// handler timeout ends them.
    #[serde(default)]
    pub hang_times: u32,
    /// The handler blocks its thread this long (`std::thread::sleep`, standing in for a
    /// synchronous driver), unless the worker runs with `await_blocks`.
    #[serde(default)]
    pub block_ms: u64,
    /// The handler spins on the CPU this long without yielding.
    #[serde(default)]
    pub spin_ms: u64,
}

impl Task {
    /// A plain task.
    pub fn new(n: u64) -> Self {
        Task {
            n,
            slow_ms: 0,
            poison: false,
            fail_times: 0,
            hang_times: 0,
            block_ms: 0,
            spin_ms: 0,
        }
    }
}

/// Settings for one test worker process.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub url: String,
    pub prefix: String,
    pub group: String,
    pub ledger: PathBuf,
    pub concurrency: usize,
    pub visibility_timeout: Duration,
    pub max_attempts: u32,
    pub grace: Duration,
    pub mover_interval: Duration,
    pub consumer: Option<String>,
    /// More groups subscribed in the same process (same handler, same options).
    pub extra_groups: Vec<String>,
    /// The bus's command timeout (default: the library's).
    pub command_timeout: Option<Duration>,
    /// The handler timeout (default: none).
    pub handler_timeout: Option<Duration>,
    /// Runs the handlers in blocking mode (on the blocking pool).
    pub blocking: bool,
    /// The handler `.await`s a sleep of `block_ms` instead of blocking its thread.
    pub await_blocks: bool,
    /// The Tokio runtime's worker threads (default: Tokio's, one per core).
    pub threads: Option<usize>,
    /// Every handler of this worker hangs (never returns), whatever the task says.
    pub hang: bool,
}

impl WorkerArgs {
    pub fn new(url: &str, prefix: &str, group: &str, ledger: &Path) -> Self {
        WorkerArgs {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            group: group.to_owned(),
            ledger: ledger.to_owned(),
            concurrency: 8,
            visibility_timeout: Duration::from_secs(1),
            max_attempts: 5,
            grace: Duration::from_secs(10),
            mover_interval: Duration::from_millis(500),
            consumer: None,
            extra_groups: Vec::new(),
            command_timeout: None,
            handler_timeout: None,
            blocking: false,
            await_blocks: false,
            threads: None,
            hang: false,
        }
    }
}

/// A running `test_worker` process.
#[derive(Debug)]
pub struct WorkerProc {
    child: Child,
    pub consumer: String,
}

/// The command that starts a test worker: the `test_worker` binary (tests get its path from
/// cargo; next to the current executable otherwise), or else the current executable with a
/// `worker` first argument (the chaos binary always runs its workers that way).
pub fn test_worker_command() -> Command {
    if let Some(p) = option_env!("CARGO_BIN_EXE_test_worker") {
        if Path::new(p).exists() {
            return Command::new(p);
        }
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let is_chaos = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("chaos"));
    if is_chaos {
        // Never a stale sibling binary: the chaos suite runs its workers as itself.
        let mut cmd = Command::new(exe);
        cmd.arg("worker");
        return cmd;
    }
    if let Some(dir) = exe.parent() {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join("test_worker");
            if p.exists() {
                return Command::new(p);
            }
        }
    }
    let mut cmd = Command::new(exe);
    cmd.arg("worker");
    cmd
}

impl WorkerProc {
    /// Starts a worker and waits until it reports `ready` (its groups exist, it reads).
    pub fn spawn(args: &WorkerArgs) -> std::io::Result<WorkerProc> {
        let mut cmd = test_worker_command();
        cmd.arg("--url")
            .arg(&args.url)
            .arg("--prefix")
            .arg(&args.prefix)
            .arg("--group")
            .arg(&args.group)
            .arg("--ledger")
            .arg(&args.ledger)
            .arg("--concurrency")
            .arg(args.concurrency.to_string())
            .arg("--vt-ms")
            .arg(args.visibility_timeout.as_millis().to_string())
            .arg("--max-attempts")
            .arg(args.max_attempts.to_string())
            .arg("--grace-ms")
            .arg(args.grace.as_millis().to_string())
            .arg("--mover-ms")
            .arg(args.mover_interval.as_millis().to_string());
        if let Some(c) = &args.consumer {
            cmd.arg("--consumer").arg(c);
        }
        if !args.extra_groups.is_empty() {
            cmd.arg("--more-groups").arg(args.extra_groups.join(","));
        }
        if let Some(t) = args.command_timeout {
            cmd.arg("--command-timeout-ms")
                .arg(t.as_millis().to_string());
        }
        if let Some(t) = args.handler_timeout {
            cmd.arg("--timeout-ms").arg(t.as_millis().to_string());
        }
        if args.blocking {
            cmd.arg("--blocking");
        }
        if args.await_blocks {
            cmd.arg("--await-blocks");
        }
        if args.hang {
            cmd.arg("--hang");
        }
        if let Some(n) = args.threads {
            cmd.arg("--threads").arg(n.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("ready ") => Ok(WorkerProc {
                child,
                consumer: line.trim_start_matches("ready ").to_owned(),
            }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other(format!(
                    "worker did not get ready: {other:?}"
                )))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful shutdown), then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerLine {
    pub kind: String,
    pub n: u64,
    pub attempt: u32,
    pub pid: u32,
    pub group: String,
}

/// Reads every ledger file in `dir` (complete lines only: a SIGKILL can cut the last one).
pub fn read_ledgers(dir: &Path) -> Vec<LedgerLine> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let p: Vec<&str> = line.split_whitespace().collect();
            if p.len() == 4 || p.len() == 5 {
                if let (Ok(n), Ok(attempt), Ok(pid)) = (p[1].parse(), p[2].parse(), p[3].parse()) {
                    out.push(LedgerLine {
                        kind: p[0].to_owned(),
                        n,
                        attempt,
                        pid,
                        group: p.get(4).map(|g| (*g).to_owned()).unwrap_or_default(),
                    });
                }
            }
        }
    }
    out
}

/// How many `done` lines each task has (all groups).
pub fn done_counts(lines: &[LedgerLine]) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for l in lines.iter().filter(|l| l.kind == "done") {
        *m.entry(l.n).or_default() += 1;
    }
    m
}

/// How many `done` lines each task has in one group.
pub fn done_counts_in(lines: &[LedgerLine], group: &str) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for l in lines
        .iter()
        .filter(|l| l.kind == "done" && l.group == group)
    {
        *m.entry(l.n).or_default() += 1;
    }
    m
}

/// A fresh directory for ledgers, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "streambus-{label}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let _ = std::fs::create_dir_all(&p);
        TempDir(p)
    }

    pub fn ledger(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.ledger"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
