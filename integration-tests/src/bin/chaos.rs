//! The chaos suite: real worker processes against a real `redis-server` on loopback,
//! with faults injected while events flow, then a checker over the ledgers and Redis state.
//!
//! `cargo run --release -p integration-tests --bin chaos -- [--events N] [--workers W]
//!   [--duration-secs S] [--worker-kills K] [--graceful-stops G] [--redis-kills R] [--stalls N]
//!   [--vt-ms MS] [--seed X]`
//!
//! Faults: SIGKILL of workers mid-handler (then restarted), SIGTERM (graceful) of workers,
//! poison events that abort whichever process runs them (1 in 97), slow handlers (longer than the
//! visibility timeout: leases), Redis SIGKILL + restart with AOF `everysec`, Redis SIGSTOP longer
//! than the visibility timeout. Every worker appends to its own ledger (`start`, then `done`
//! before the ack); the producer keeps its own record of acknowledged publishes.
//!
//! It ends by printing one JSON line:
//! `{"published":…,"handled":…,"dead_lettered":…,"lost":…,"duplicates":…,"worker_kills":…,"redis_kills":…,…}`
//! and exits 1 unless lost = 0, the dead letters are exactly the poison events, and nothing is
//! left pending.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bus_core::Bus;
use integration_tests::procs::{
    done_counts, read_ledgers, LedgerLine, Task, TempDir, WorkerArgs, WorkerProc,
};
use integration_tests::RedisServer;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            if let Some(v) = it.next().and_then(|v| v.parse().ok()) {
                return v;
            }
        }
    }
    default
}

/// A small deterministic PRNG (xorshift64*), so a run can be repeated with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const PREFIX: &str = "chaos";
const GROUP: &str = "chaos";
const POISON_EVERY: u64 = 97;

#[derive(Debug, Default)]
struct Counters {
    worker_kills: u64,
    graceful_stops: u64,
    redis_kills: u64,
    redis_stalls: u64,
    publish_errors: u64,
}

struct Pool {
    args: WorkerArgs,
    dir: std::path::PathBuf,
    procs: Vec<WorkerProc>,
    spawned: u64,
}

impl Pool {
    fn spawn(&mut self) {
        self.args.ledger = self.dir.join(format!("worker-{}.ledger", self.spawned));
        self.spawned += 1;
        // Redis may be down right now: try for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match WorkerProc::spawn(&self.args) {
                Ok(p) => {
                    self.procs.push(p);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chaos: worker start failed ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot start a worker: {e}"),
            }
        }
    }

    /// Restarts workers that died (poison pills abort them).
    fn supervise(&mut self, want: usize) {
        self.procs.retain_mut(|p| p.exited().is_none());
        while self.procs.len() < want {
            self.spawn();
        }
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("worker") {
        // The chaos suite's worker processes are this binary too.
        std::process::exit(integration_tests::worker::worker_main(argv[1..].to_vec()).await);
    }
    let events: u64 = arg("--events", 3000);
    let workers: usize = arg("--workers", 4);
    let duration = Duration::from_secs(arg("--duration-secs", 60));
    let want_kills: u64 = arg("--worker-kills", 24);
    let want_terms: u64 = arg("--graceful-stops", want_kills / 4);
    let want_redis_kills: u64 = arg("--redis-kills", 2);
    let want_stalls: u64 = arg("--stalls", 1);
    let seed: u64 = arg("--seed", 0x5eed);
    let mut rng = Rng(seed | 1);
    let vt = Duration::from_millis(arg("--vt-ms", 1000));

    let dir = TempDir::new("chaos");
    let mut redis = RedisServer::builder()
        .appendonly(true)
        .start()
        .expect("redis-server");
    let url = redis.url();
    let bus = Bus::builder()
        .prefix(PREFIX)
        .command_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("connect");
    let mut args = WorkerArgs::new(&url, PREFIX, GROUP, &dir.ledger("w"));
    args.visibility_timeout = vt;
    args.max_attempts = 5;
    args.concurrency = 8;
    args.grace = Duration::from_secs(5);
    let mut pool = Pool {
        args,
        dir: dir.0.clone(),
        procs: Vec::new(),
        spawned: 0,
    };
    for _ in 0..workers {
        pool.spawn();
    }

    let started = Instant::now();
    let mut c = Counters::default();
    let poison: HashSet<u64> = (1..events).filter(|n| n % POISON_EVERY == 0).collect();
    // The producer runs on its own task, so events keep coming during every fault.
    let producer = {
        let bus = bus.clone();
        let poison = poison.clone();
        let mut rng = Rng(rng.next() | 1);
        let every = duration.mul_f64(0.8) / (events.max(1) as u32);
        tokio::spawn(async move {
            let mut acked = HashSet::new();
            let mut errors = 0u64;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..events {
                tick.tick().await;
                let task = Task {
                    n,
                    slow_ms: if rng.below(20) == 0 {
                        vt.as_millis() as u64 * 3 / 2
                    } else {
                        rng.below(20)
                    },
                    poison: poison.contains(&n),
                    fail_times: u32::from(rng.below(10) == 0),
                };
                // A failed publish is indeterminate (it may be stored): publish again, same n.
                // The checker counts extra copies as duplicates, never as losses.
                while bus.publish(&task).await.is_err() {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked.insert(n);
            }
            (acked, errors)
        })
    };
    // Faults are spread over the run: one fault slot every `tick`.
    let fault_slots = want_kills + want_terms + want_redis_kills + want_stalls;
    let tick = duration / (fault_slots as u32 + 1).max(1);
    let mut next_fault = started + tick;
    // 0 = worker SIGKILL, 3 = worker SIGTERM, 1 = Redis kill, 2 = Redis stall
    let mut plan: Vec<u8> = Vec::new();
    plan.extend(std::iter::repeat_n(0, want_kills as usize));
    plan.extend(std::iter::repeat_n(3, want_terms as usize));
    plan.extend(std::iter::repeat_n(1, want_redis_kills as usize));
    plan.extend(std::iter::repeat_n(2, want_stalls as usize));
    for i in (1..plan.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        plan.swap(i, j);
    }
    while !plan.is_empty() {
        if Instant::now() >= next_fault {
            if let Some(kind) = plan.pop() {
                match kind {
                    0 | 3 if pool.procs.is_empty() => plan.push(kind),
                    0 => {
                        let i = rng.below(pool.procs.len() as u64) as usize;
                        pool.procs[i].kill();
                        c.worker_kills += 1;
                    }
                    3 => {
                        let i = rng.below(pool.procs.len() as u64) as usize;
                        pool.procs[i].terminate(Duration::from_secs(10));
                        c.graceful_stops += 1;
                    }
                    1 => {
                        redis.kill().expect("kill redis");
                        c.redis_kills += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        redis.restart().expect("restart redis");
                    }
                    _ => {
                        redis.pause().expect("SIGSTOP");
                        tokio::time::sleep(vt * 2 + vt / 2).await;
                        redis.resume().expect("SIGCONT");
                        c.redis_stalls += 1;
                    }
                }
            }
            next_fault += tick;
        }
        pool.supervise(workers);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (acked, errors) = producer.await.expect("producer");
    c.publish_errors = errors;

    // Quiescence: every acknowledged publish handled or dead-lettered, nothing pending.
    let dlq = bus.dead_letters("tasks", GROUP).expect("dlq");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (handled_counts, dead): (HashMap<u64, u64>, HashSet<u64>) = loop {
        pool.supervise(workers);
        let done = done_counts(&read_ledgers(&dir.0));
        let dead = dead_lettered(&dlq).await;
        let open = acked
            .iter()
            .filter(|n| !done.contains_key(n) && !dead.contains(n))
            .count();
        let pend = integration_tests::pending_count(&bus, "tasks", GROUP).await;
        if (open == 0 && pend == Some(0)) || Instant::now() > deadline {
            break (done, dead);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for p in &mut pool.procs {
        p.terminate(Duration::from_secs(10));
    }

    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !handled_counts.contains_key(n) && !dead.contains(n))
        .collect();
    let duplicates: u64 = handled_counts.values().map(|c| c - 1).sum();
    let false_dead: Vec<u64> = dead
        .iter()
        .copied()
        .filter(|n| !poison.contains(n))
        .collect();
    let poison_missed: Vec<u64> = poison
        .iter()
        .copied()
        .filter(|n| acked.contains(n) && !dead.contains(n))
        .collect();
    let pend = integration_tests::pending_count(&bus, "tasks", GROUP)
        .await
        .unwrap_or(u64::MAX);
    let ok = lost.is_empty() && false_dead.is_empty() && poison_missed.is_empty() && pend == 0;
    let report = serde_json::json!({
        "published": acked.len(),
        "handled": handled_counts.len(),
        "dead_lettered": dead.len(),
        "lost": lost.len(),
        "duplicates": duplicates,
        "worker_kills": c.worker_kills,
        "redis_kills": c.redis_kills,
        "graceful_stops": c.graceful_stops,
        "redis_stalls": c.redis_stalls,
        "publish_errors": c.publish_errors,
        "false_dead_letters": false_dead.len(),
        "poison_not_dead_lettered": poison_missed.len(),
        "pending_at_end": pend,
        "worker_processes": pool.spawned,
        "seconds": started.elapsed().as_secs(),
        "ok": ok,
    });
    if !lost.is_empty() {
        eprintln!("chaos: lost {:?}", &lost[..lost.len().min(20)]);
    }
    if !false_dead.is_empty() {
        eprintln!("chaos: innocent events dead-lettered {false_dead:?}");
        explain_dead_letters(&dlq, &read_ledgers(&dir.0), &false_dead).await;
    }
    println!("{report}");
    drop(pool);
    drop(redis);
    drop(dir);
    std::process::exit(if ok { 0 } else { 1 });
}

/// Prints, for each of `tasks`, its dead letter (reason, attempts, last error, consumer) and what
/// the ledgers say about its attempts, so a failing run can be understood from its output.
async fn explain_dead_letters(dlq: &bus_core::DeadLetters, ledgers: &[LedgerLine], tasks: &[u64]) {
    let Ok(list) = dlq.list(100_000).await else {
        return;
    };
    for d in list {
        let n = d
            .fields
            .iter()
            .find(|(k, _)| k == b"p")
            .and_then(|(_, p)| bus_core::Codec::MessagePack.decode::<Task>(p).ok());
        let Some(task) = n.filter(|t| tasks.contains(&t.n)) else {
            continue;
        };
        let history: Vec<String> = ledgers
            .iter()
            .filter(|l| l.n == task.n)
            .map(|l| format!("{} #{} pid {}", l.kind, l.attempt, l.pid))
            .collect();
        eprintln!(
            "chaos: task {task:?} dead-lettered: reason {}, attempts {}, error {:?}, consumer {}; ledger: {history:?}",
            d.reason, d.attempts, d.error, d.consumer
        );
    }
}

/// The task numbers in the dead-letter stream.
async fn dead_lettered(dlq: &bus_core::DeadLetters) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(list) = dlq.list(100_000).await else {
        return out;
    };
    for d in list {
        let payload = d
            .fields
            .iter()
            .find(|(k, _)| k == b"p")
            .map(|(_, v)| v.clone());
        if let Some(p) = payload {
            if let Ok(t) = bus_core::Codec::MessagePack.decode::<Task>(&p) {
                out.insert(t.n);
            }
        }
    }
    out
}
