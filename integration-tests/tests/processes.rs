//! Real processes, real faults: SIGKILLed and SIGTERMed worker processes, poison pills that abort
//! the process, Redis killed and restarted (AOF), Redis stalled with SIGSTOP.

use bus_core::testing::RedisAccess;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use bus_core::{Bus, Error};
use fred::prelude::*;
use integration_tests::procs::{done_counts, read_ledgers, Task, TempDir, WorkerArgs, WorkerProc};
use integration_tests::{RedisServer, TestEnv};

/// `u64::MAX` while Redis does not answer (during restarts).
async fn pending(bus: &Bus, group: &str) -> u64 {
    integration_tests::pending_count(bus, "tasks", group)
        .await
        .unwrap_or(u64::MAX)
}

const T: Duration = Duration::from_secs(60);

/// Waits until every task in `ns` has a `done` line and nothing is pending.
async fn wait_all_done(bus: &Bus, dir: &TempDir, group: &str, ns: &[u64], what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let done = done_counts(&read_ledgers(&dir.0));
        let missing: Vec<u64> = ns
            .iter()
            .copied()
            .filter(|n| !done.contains_key(n))
            .collect();
        if missing.is_empty() && pending(bus, group).await == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; missing {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_tasks(bus: &Bus, tasks: &[Task]) {
    for chunk in tasks.chunks(100) {
        bus.publish_batch(chunk).await.expect("publish");
    }
}

fn slow_tasks(range: std::ops::Range<u64>, ms: u64) -> Vec<Task> {
    range
        .map(|n| Task {
            slow_ms: ms,
            ..Task::new(n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_handler_leaves_its_events_to_another_worker() {
    let env = TestEnv::new("sigkill").await;
    let dir = TempDir::new("sigkill");
    let args = WorkerArgs::new(&env.url, &env.prefix, "g", &dir.ledger("a"));
    let mut a = WorkerProc::spawn(&args).expect("worker a");
    let tasks = slow_tasks(0..40, 400);
    publish_tasks(&env.bus, &tasks).await;
    // Kill A while it is in the middle of 8 handlers.
    let deadline = Instant::now() + T;
    while read_ledgers(&dir.0)
        .iter()
        .filter(|l| l.kind == "start")
        .count()
        < 8
    {
        assert!(
            Instant::now() < deadline,
            "worker a never started 8 handlers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill();
    let lines = read_ledgers(&dir.0);
    let done_by_a: HashSet<u64> = lines
        .iter()
        .filter(|l| l.kind == "done")
        .map(|l| l.n)
        .collect();
    let interrupted: HashSet<u64> = lines
        .iter()
        .filter(|l| l.kind == "start" && !done_by_a.contains(&l.n))
        .map(|l| l.n)
        .collect();
    assert!(
        !interrupted.is_empty(),
        "the kill should interrupt handlers"
    );

    let b = WorkerProc::spawn(&WorkerArgs::new(
        &env.url,
        &env.prefix,
        "g",
        &dir.ledger("b"),
    ))
    .expect("worker b");
    let ns: Vec<u64> = (0..40).collect();
    wait_all_done(&env.bus, &dir, "g", &ns, "worker b to finish everything").await;
    let lines = read_ledgers(&dir.0);
    for n in &interrupted {
        // The kill cut the attempt short beside other handlers: that says nothing about the
        // task, so it is not charged and b's run is attempt 1 again.
        let finished = lines
            .iter()
            .any(|l| l.kind == "done" && l.n == *n && l.pid == b.pid() && l.attempt == 1);
        assert!(
            finished,
            "task {n} interrupted by the kill was not finished by b, uncharged"
        );
    }
    let dups: u64 = done_counts(&lines).values().map(|c| c - 1).sum();
    assert!(
        dups <= 8,
        "{dups} duplicates; at most the 8 in flight at the kill"
    );
    assert_eq!(
        env.bus
            .dead_letters("tasks", "g")
            .expect("dlq")
            .count()
            .await
            .expect("n"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_pill_that_aborts_the_process_is_dead_lettered_after_max_attempts() {
    let env = TestEnv::new("poison").await;
    let dir = TempDir::new("poison");
    let mut args = WorkerArgs::new(&env.url, &env.prefix, "g", &dir.ledger("w0"));
    args.max_attempts = 3;
    args.visibility_timeout = Duration::from_millis(500);
    let mut workers: Vec<WorkerProc> = Vec::new();
    let mut spawned = 0;
    let mut spawn = |workers: &mut Vec<WorkerProc>| {
        args.ledger = dir.ledger(&format!("w{spawned}"));
        spawned += 1;
        workers.push(WorkerProc::spawn(&args).expect("worker"));
    };
    spawn(&mut workers);
    spawn(&mut workers);
    let mut tasks: Vec<Task> = (0..30)
        .map(|n| Task {
            slow_ms: 20,
            ..Task::new(n)
        })
        .collect();
    tasks[13].poison = true;
    publish_tasks(&env.bus, &tasks).await;
    let dlq = env.bus.dead_letters("tasks", "g").expect("dlq");
    let innocent: Vec<u64> = (0..30).filter(|n| *n != 13).collect();
    let deadline = Instant::now() + T;
    loop {
        // Supervise: restart workers the poison pill killed, as a process manager would.
        let before = workers.len();
        workers.retain_mut(|w| w.exited().is_none());
        for _ in workers.len()..before {
            spawn(&mut workers);
        }
        let done = done_counts(&read_ledgers(&dir.0));
        if dlq.count().await.expect("n") == 1
            && innocent.iter().all(|n| done.contains_key(n))
            && pending(&env.bus, "g").await == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poison not dead-lettered in time (done {})",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = &dlq.list(10).await.expect("list")[0];
    assert_eq!(d.reason, "max_attempts");
    assert_eq!(d.attempts, 3);
    let lines = read_ledgers(&dir.0);
    let poison_runs = lines
        .iter()
        .filter(|l| l.kind == "start" && l.n == 13)
        .count();
    // Its first run (read beside other handlers) is not charged: the crash could have been any
    // of them. Then it runs alone, and each crash alone counts: max_attempts of them.
    assert_eq!(
        poison_runs, 4,
        "the poison pill must run once beside others, then exactly max_attempts times alone"
    );
    assert!(!lines.iter().any(|l| l.kind == "done" && l.n == 13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_handlers_acks_them_and_exits_cleanly() {
    let env = TestEnv::new("sigterm").await;
    let dir = TempDir::new("sigterm");
    let mut args = WorkerArgs::new(&env.url, &env.prefix, "g", &dir.ledger("a"));
    args.concurrency = 4;
    let mut a = WorkerProc::spawn(&args).expect("worker");
    publish_tasks(&env.bus, &slow_tasks(0..12, 500)).await;
    let deadline = Instant::now() + T;
    while read_ledgers(&dir.0)
        .iter()
        .filter(|l| l.kind == "start")
        .count()
        < 4
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = a
        .terminate(Duration::from_secs(15))
        .expect("worker did not exit after SIGTERM");
    assert!(status.success(), "graceful shutdown exit status {status:?}");
    let lines = read_ledgers(&dir.0);
    let started: HashSet<u64> = lines
        .iter()
        .filter(|l| l.kind == "start")
        .map(|l| l.n)
        .collect();
    let done = done_counts(&lines);
    for n in &started {
        assert_eq!(
            done.get(n),
            Some(&1),
            "task {n} was running at SIGTERM and must finish once"
        );
    }
    assert_eq!(
        pending(&env.bus, "g").await,
        0,
        "finished handlers must be acknowledged"
    );
    // The rest is handled by the next worker, without repeats.
    args.ledger = dir.ledger("b");
    let _b = WorkerProc::spawn(&args).expect("worker b");
    let ns: Vec<u64> = (0..12).collect();
    wait_all_done(&env.bus, &dir, "g", &ns, "the remaining tasks").await;
    let dups: Vec<_> = done_counts(&read_ledgers(&dir.0))
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .collect();
    assert!(
        dups.is_empty(),
        "duplicates after a graceful stop: {dups:?}"
    );
}

fn own_redis() -> Option<RedisServer> {
    if !integration_tests::redis_server_available() {
        eprintln!("skipping: needs redis-server on PATH");
        return None;
    }
    Some(
        RedisServer::builder()
            .appendonly(true)
            .start()
            .expect("redis-server"),
    )
}

async fn connect(url: &str, prefix: &str) -> Bus {
    Bus::builder()
        .prefix(prefix)
        .command_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_clearly_while_redis_is_down_and_works_after() {
    let Some(mut redis) = own_redis() else { return };
    let bus = connect(&redis.url(), "down").await;
    bus.publish(&Task::new(1)).await.expect("publish while up");
    redis.kill().expect("kill");
    let started = Instant::now();
    let r = bus.publish(&Task::new(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "publish hung for {:?}",
        started.elapsed()
    );
    match r {
        Err(e @ Error::Redis(_)) => assert!(e.is_connection(), "{e}"),
        other => panic!("expected a connection error, got {other:?}"),
    }
    redis.restart().expect("restart");
    let deadline = Instant::now() + T;
    while bus.publish(&Task::new(3)).await.is_err() {
        assert!(Instant::now() < deadline, "publish never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_resume_after_redis_is_killed_and_restarted_with_aof_and_nothing_is_lost() {
    let Some(mut redis) = own_redis() else { return };
    let dir = TempDir::new("redis-kill");
    let bus = connect(&redis.url(), "rk").await;
    let mut args = WorkerArgs::new(&redis.url(), "rk", "g", &dir.ledger("a"));
    args.concurrency = 4;
    let _a = WorkerProc::spawn(&args).expect("worker a");
    args.ledger = dir.ledger("b");
    let _b = WorkerProc::spawn(&args).expect("worker b");
    publish_tasks(&bus, &slow_tasks(0..100, 20)).await;
    let deadline = Instant::now() + T;
    while done_counts(&read_ledgers(&dir.0)).len() < 20 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.kill().expect("kill redis");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().expect("restart redis");
    for t in slow_tasks(100..200, 20) {
        let deadline = Instant::now() + T;
        while bus.publish(&t).await.is_err() {
            assert!(Instant::now() < deadline, "publish never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ns: Vec<u64> = (0..200).collect();
    wait_all_done(
        &bus,
        &dir,
        "g",
        &ns,
        "all 200 tasks after the Redis restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_longer_than_the_visibility_timeout_loses_nothing_and_duplicates_little() {
    let Some(redis) = own_redis() else { return };
    let dir = TempDir::new("stall");
    let bus = connect(&redis.url(), "stall").await;
    let mut args = WorkerArgs::new(&redis.url(), "stall", "g", &dir.ledger("a"));
    args.concurrency = 4;
    args.visibility_timeout = Duration::from_secs(1);
    let _a = WorkerProc::spawn(&args).expect("worker a");
    args.ledger = dir.ledger("b");
    let _b = WorkerProc::spawn(&args).expect("worker b");
    publish_tasks(&bus, &slow_tasks(0..40, 1500)).await;
    let deadline = Instant::now() + T;
    while read_ledgers(&dir.0)
        .iter()
        .filter(|l| l.kind == "start")
        .count()
        < 8
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.pause().expect("SIGSTOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.resume().expect("SIGCONT");
    let ns: Vec<u64> = (0..40).collect();
    wait_all_done(&bus, &dir, "g", &ns, "all tasks after the stall").await;
    let dups: u64 = done_counts(&read_ledgers(&dir.0))
        .values()
        .map(|c| c - 1)
        .sum();
    assert!(
        dups <= 8,
        "{dups} duplicates after a stall; at most the 8 in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_can_wait_for_replicas() {
    let Some(primary) = own_redis() else { return };
    let replica = RedisServer::builder()
        .arg("--replicaof")
        .arg("127.0.0.1")
        .arg(primary.port().to_string())
        .start()
        .expect("replica");
    let bus = connect(&primary.url(), "wait").await;
    let deadline = Instant::now() + T;
    loop {
        let info: String = bus
            .redis()
            .info(Some(fred::types::InfoKind::Replication))
            .await
            .expect("INFO");
        if info.contains("connected_slaves:1") && info.contains("state=online") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never came online: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opts = bus_core::PublishOptions::new().wait_for_replicas(1, Duration::from_secs(5));
    let ok = bus
        .publish_with(&Task::new(1), opts)
        .await
        .expect("replicated publish");
    assert!(!ok.entry_id.is_empty());
    // A stalled replica cannot confirm: the publish says so (the event is on the primary).
    replica.pause().expect("SIGSTOP replica");
    let opts = bus_core::PublishOptions::new().wait_for_replicas(1, Duration::from_millis(300));
    let r = bus.publish_with(&Task::new(2), opts).await;
    replica.resume().expect("SIGCONT replica");
    match r {
        Err(Error::NotReplicated { acked, wanted, .. }) => assert_eq!((acked, wanted), (0, 1)),
        other => panic!("expected NotReplicated, got {other:?}"),
    }
    let key = bus.stream_key("tasks").expect("key");
    let len: u64 = bus.redis().xlen(key.as_str()).await.expect("XLEN");
    assert_eq!(len, 2);
}
