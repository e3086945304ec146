//! Handlers that block their thread, in real worker processes: leases hold while such handlers
//! run (renewals live on a thread of their own), in blocking mode and without it, and still stop
//! when the process is frozen.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bus_core::Bus;
use integration_tests::procs::{read_ledgers, LedgerLine, Task, TempDir, WorkerArgs, WorkerProc};
use integration_tests::TestEnv;

const T: Duration = Duration::from_secs(90);
const VT: Duration = Duration::from_secs(1);
/// Blocking handlers hold their thread for 2.5 visibility timeouts.
const BLOCK_MS: u64 = 2500;

/// A worker of group `g` with 2 runtime threads and 8 handler slots: 2 blocking handlers
/// occupy every runtime thread.
fn worker_args(env: &TestEnv, dir: &TempDir, name: &str) -> WorkerArgs {
    let mut args = WorkerArgs::new(&env.url, &env.prefix, "g", &dir.ledger(name));
    args.visibility_timeout = VT;
    args.concurrency = 8;
    args.threads = Some(2);
    args
}

async fn publish(bus: &Bus, tasks: &[Task]) {
    bus.publish_batch(tasks).await.expect("publish");
}

/// Waits until every task has a `done` line and nothing is pending; returns the ledgers.
async fn wait_all_done(bus: &Bus, dir: &TempDir, n: u64) -> Vec<LedgerLine> {
    let deadline = Instant::now() + T;
    loop {
        let lines = read_ledgers(&dir.0);
        let done = lines.iter().filter(|l| l.kind == "done").count() as u64;
        let pending = integration_tests::pending_count(bus, "tasks", "g").await;
        if done >= n && pending == Some(0) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {done} of {n} done, pending {pending:?}; ledgers {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every task started once and finished once, in all the ledgers.
fn assert_each_ran_once(lines: &[LedgerLine], n: u64) {
    let mut runs: HashMap<(String, u64), Vec<u32>> = HashMap::new();
    for l in lines {
        runs.entry((l.kind.clone(), l.n)).or_default().push(l.pid);
    }
    let twice: Vec<String> = runs
        .iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|((kind, task), pids)| format!("{kind} {task} in pids {pids:?}"))
        .collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    for task in 0..n {
        assert!(
            runs.contains_key(&("done".to_owned(), task)),
            "task {task} never finished"
        );
    }
}

fn blocking_tasks(n: u64, f: impl Fn(Task) -> Task) -> Vec<Task> {
    (0..n).map(|i| f(Task::new(i))).collect()
}

/// A worker whose handlers block every runtime thread longer than the visibility timeout, beside
/// a peer that is always responsive (its scanner takes over any entry whose lease runs out):
/// nothing runs twice, so the busy worker's leases were renewed all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_blocking_every_runtime_thread_keep_their_leases() {
    let env = TestEnv::new("block-peer").await;
    let dir = TempDir::new("block-peer");
    let _busy = WorkerProc::spawn(&worker_args(&env, &dir, "busy")).expect("busy worker");
    let tasks = blocking_tasks(16, |t| Task {
        block_ms: BLOCK_MS,
        ..t
    });
    // The busy worker reads its 8 first; the peer joins once they are held.
    publish(&env.bus, &tasks[..8]).await;
    let deadline = Instant::now() + T;
    while !read_ledgers(&dir.0).iter().any(|l| l.kind == "start") {
        assert!(Instant::now() < deadline, "the busy worker never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut peer_args = worker_args(&env, &dir, "peer");
    peer_args.await_blocks = true;
    let _peer = WorkerProc::spawn(&peer_args).expect("peer worker");
    publish(&env.bus, &tasks[8..]).await;
    let lines = wait_all_done(&env.bus, &dir, 16).await;
    assert_each_ran_once(&lines, 16);
}

/// Two workers of one group, handlers blocking their thread for 2.5 visibility timeouts, no
/// faults: every event runs once, without and with the blocking mode.
async fn two_blocking_workers(label: &str, blocking: bool, task: impl Fn(Task) -> Task) {
    let env = TestEnv::new(label).await;
    let dir = TempDir::new(label);
    let mut args = worker_args(&env, &dir, "a");
    args.blocking = blocking;
    let _a = WorkerProc::spawn(&args).expect("worker a");
    args.ledger = dir.ledger("b");
    let _b = WorkerProc::spawn(&args).expect("worker b");
    // Quick events between the blocking ones: they must not run twice either.
    let tasks = blocking_tasks(28, |t| if t.n % 4 == 3 { t } else { task(t) });
    publish(&env.bus, &tasks).await;
    let lines = wait_all_done(&env.bus, &dir, 28).await;
    assert_each_ran_once(&lines, 28);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_handlers_that_block_their_thread_run_every_event_once() {
    two_blocking_workers("block-two", false, |t| Task {
        block_ms: BLOCK_MS,
        ..t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_blocking_mode_run_every_event_once() {
    two_blocking_workers("block-mode", true, |t| Task {
        block_ms: BLOCK_MS,
        ..t
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_cpu_bound_handlers_run_every_event_once() {
    two_blocking_workers("block-spin", false, |t| Task {
        spin_ms: BLOCK_MS,
        ..t
    })
    .await;
}

/// Renewal is alive while the process is: a handler that never ends keeps its entry while its
/// worker runs, and loses it once the worker is frozen (SIGSTOP), to a worker that finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_stops_renewing_and_its_entry_is_taken_over() {
    let env = TestEnv::new("block-stop").await;
    let dir = TempDir::new("block-stop");
    let mut args = worker_args(&env, &dir, "frozen");
    args.blocking = true;
    // Its handlers never end (and there is no handler timeout).
    args.hang = true;
    let mut frozen = WorkerProc::spawn(&args).expect("worker");
    publish(&env.bus, &[Task::new(0)]).await;
    let deadline = Instant::now() + T;
    let entry = loop {
        if read_ledgers(&dir.0).iter().any(|l| l.kind == "start") {
            if let Some(id) = integration_tests::support::pending_ids(&env.bus, "tasks", "g")
                .await
                .into_iter()
                .next()
            {
                break id;
            }
        }
        assert!(Instant::now() < deadline, "the handler never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Three visibility timeouts later the entry is still leased: renewed all along.
    let watched = Instant::now();
    while watched.elapsed() < VT * 3 {
        let p = integration_tests::support::pending_entry(&env.bus, "tasks", "g", &entry)
            .await
            .expect("still pending");
        assert!(
            p.idle_ms < VT.as_millis() as u64,
            "lease not renewed: idle {} ms",
            p.idle_ms
        );
        assert_eq!(p.deliveries, 1, "taken over while its worker runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &frozen.pid().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stop.success());
    args.ledger = dir.ledger("taker");
    args.blocking = false;
    args.hang = false;
    let taker = WorkerProc::spawn(&args).expect("second worker");
    let _ = taker;
    let lines = wait_all_done(&env.bus, &dir, 1).await;
    let done: Vec<&LedgerLine> = lines.iter().filter(|l| l.kind == "done").collect();
    assert_eq!(done.len(), 1, "{lines:?}");
    assert_ne!(done[0].pid, frozen.pid(), "finished by the frozen worker?");
    frozen.kill();
}
