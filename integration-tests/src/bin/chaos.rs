//! The chaos suite: real worker processes against a real `redis-server` on loopback, with faults
//! injected while events flow, then a checker over the ledgers and Redis state.
//!
//! `cargo run --release -p integration-tests --bin chaos -- [--events N] [--workers W]
//!   [--duration-secs S] [--worker-kills K] [--graceful-stops G] [--redis-kills R] [--stalls N]
//!   [--long-stalls N] [--partitions N] [--vt-ms MS] [--concurrency C] [--settle-secs S]
//!   [--seed X]`
//!
//! Every worker process subscribes two groups (`chaos`, `chaos2`) to the same stream, so a crash
//! hits handlers of both, and reaches Redis through a fault proxy of its own. Faults: SIGKILL of
//! workers mid-handler (then restarted), SIGTERM (graceful), poison events that abort whichever
//! process runs them (1 in 97), slow handlers (2.5× the visibility timeout: leases) next to them,
//! hung handlers (ended by the handler timeout), handlers that block their thread past the
//! visibility timeout or spin on the CPU (every other worker runs in blocking mode), a downstream outage (a burst of events whose
//! first two attempts fail), events of a type no handler knows, Redis SIGKILL + restart with AOF
//! `everysec`, Redis SIGSTOP longer than the visibility timeout ("stall") and longer than the
//! command timeout ("long stall"), and partitions (a worker's connections blackholed for 2.5×
//! the visibility timeout, then healed). Every worker appends to its own ledger (`start`, then
//! `done` before the ack); the producer keeps its own record of acknowledged publishes.
//!
//! It ends by printing one JSON line (`published`, `handled`, `dead_lettered`, `lost`,
//! `duplicates`, `duplicates_bound`, `false_dead_letters`, fault counters …) and exits 1 unless,
//! in every group, lost = 0, the dead letters are exactly the poison events, nothing is left
//! pending, and duplicates stay within what was in flight at the faults.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bus_core::{Bus, Event};
use integration_tests::procs::{
    done_counts_in, read_ledgers, LedgerLine, Task, TempDir, WorkerArgs, WorkerProc,
};
use integration_tests::proxy::FaultProxy;
use integration_tests::support::Rng;
use integration_tests::RedisServer;
use serde::{Deserialize, Serialize};

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

/// An event type no worker handles, published on the same stream.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(stream = "tasks", name = "Stranger")]
struct Stranger {
    n: u64,
}

const PREFIX: &str = "chaos";
const GROUPS: [&str; 2] = ["chaos", "chaos2"];
const POISON_EVERY: u64 = 97;
/// The workers' command timeout; a long stall lasts longer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Counters {
    worker_kills: u64,
    graceful_stops: u64,
    redis_kills: u64,
    redis_stalls: u64,
    long_stalls: u64,
    partitions: u64,
    publish_errors: u64,
}

/// One worker process and the proxy its connections go through.
struct Member {
    proc: WorkerProc,
    proxy: FaultProxy,
}

struct Pool {
    args: WorkerArgs,
    redis_addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
    members: Vec<Member>,
    spawned: u64,
}

impl Pool {
    fn spawn(&mut self) {
        let proxy = FaultProxy::start(self.redis_addr).expect("fault proxy");
        self.args.url = proxy.url();
        self.args.ledger = self.dir.join(format!("worker-{}.ledger", self.spawned));
        // Every other worker runs its handlers in blocking mode.
        self.args.blocking = self.spawned % 2 == 1;
        self.spawned += 1;
        // Redis may be down right now: try for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match WorkerProc::spawn(&self.args) {
                Ok(proc) => {
                    self.members.push(Member { proc, proxy });
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
        self.members.retain_mut(|m| m.proc.exited().is_none());
        while self.members.len() < want {
            self.spawn();
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("worker") {
        // The chaos suite's worker processes are this binary too.
        std::process::exit(integration_tests::worker::run_worker_process(
            argv[1..].to_vec(),
        ));
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(chaos());
}

async fn chaos() {
    let events: u64 = arg("--events", 3000);
    let workers: usize = arg("--workers", 4);
    let duration = Duration::from_secs(arg("--duration-secs", 60));
    let want_kills: u64 = arg("--worker-kills", 24);
    let want_terms: u64 = arg("--graceful-stops", want_kills / 4);
    let want_redis_kills: u64 = arg("--redis-kills", 2);
    let want_stalls: u64 = arg("--stalls", 1);
    let want_long_stalls: u64 = arg("--long-stalls", 2);
    let want_partitions: u64 = arg("--partitions", 2);
    let seed: u64 = arg("--seed", 0x5eed);
    let mut rng = Rng(seed | 1);
    let vt = Duration::from_millis(arg("--vt-ms", 1000));
    let concurrency: usize = arg("--concurrency", 8);
    let settle_for = Duration::from_secs(arg("--settle-secs", 600));

    let dir = TempDir::new("chaos");
    let mut redis = RedisServer::builder()
        .appendonly(true)
        .start()
        .expect("redis-server");
    let url = redis.url();
    let redis_addr: std::net::SocketAddr = format!("127.0.0.1:{}", redis.port())
        .parse()
        .expect("address");
    let bus = Bus::builder()
        .prefix(PREFIX)
        .command_timeout(COMMAND_TIMEOUT)
        .connect(&url)
        .await
        .expect("connect");
    let mut args = WorkerArgs::new(&url, PREFIX, GROUPS[0], &dir.ledger("w"));
    args.extra_groups = GROUPS[1..].iter().map(|g| (*g).to_owned()).collect();
    args.visibility_timeout = vt;
    args.max_attempts = 5;
    args.concurrency = concurrency;
    args.grace = Duration::from_secs(5);
    args.command_timeout = Some(COMMAND_TIMEOUT);
    // Longer than the slow handlers (2.5× the visibility timeout); ends the hung ones.
    args.handler_timeout = Some(vt * 7 / 2);
    let mut pool = Pool {
        args,
        redis_addr,
        dir: dir.0.clone(),
        members: Vec::new(),
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
        let mut rng = Rng(rng.next_u64() | 1);
        let every = duration.mul_f64(0.8) / (events.max(1) as u32);
        // A downstream outage: every event published in this window fails its first two attempts.
        let outage = (events * 4 / 10)..(events / 2);
        tokio::spawn(async move {
            let mut acked = HashSet::new();
            let mut errors = 0u64;
            let (mut hung, mut strangers, mut outage_events) = (0u64, 0u64, 0u64);
            let mut blocking = 0u64;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..events {
                tick.tick().await;
                let in_outage = outage.contains(&n);
                let slow = rng.below(20) == 0;
                // Handlers that block their thread past the visibility timeout, or spin on the
                // CPU: leases must hold while they run. Never on top of a slow handler: together
                // they would pass the handler timeout on every attempt.
                let (block, spin) = (!slow && rng.below(25) == 0, !slow && rng.below(50) == 0);
                let task = Task {
                    n,
                    slow_ms: if slow {
                        vt.as_millis() as u64 * 5 / 2
                    } else {
                        rng.below(20)
                    },
                    poison: poison.contains(&n),
                    fail_times: if in_outage {
                        2
                    } else {
                        u32::from(rng.below(10) == 0)
                    },
                    hang_times: u32::from(rng.below(50) == 0),
                    block_ms: if block {
                        vt.as_millis() as u64 * 3 / 2
                    } else {
                        0
                    },
                    spin_ms: if spin { vt.as_millis() as u64 / 2 } else { 0 },
                };
                hung += u64::from(task.hang_times);
                blocking += u64::from(task.block_ms > 0 || task.spin_ms > 0);
                outage_events += u64::from(in_outage);
                // A failed publish is indeterminate (it may be stored): publish again, same n.
                // The checker counts extra copies as duplicates, never as losses.
                while bus.publish(&task).await.is_err() {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked.insert(n);
                if rng.below(40) == 0 && bus.publish(&Stranger { n }).await.is_ok() {
                    strangers += 1;
                }
            }
            (acked, errors, hung, strangers, outage_events, blocking)
        })
    };
    // Faults are spread over the run: one fault slot every `tick`.
    let fault_slots = want_kills
        + want_terms
        + want_redis_kills
        + want_stalls
        + want_long_stalls
        + want_partitions;
    let tick = duration / (fault_slots as u32 + 1).max(1);
    let mut next_fault = started + tick;
    // 0 = worker SIGKILL, 3 = worker SIGTERM, 1 = Redis kill, 2 = Redis stall,
    // 4 = long Redis stall, 5 = partition
    let mut plan: Vec<u8> = Vec::new();
    plan.extend(std::iter::repeat_n(0, want_kills as usize));
    plan.extend(std::iter::repeat_n(3, want_terms as usize));
    plan.extend(std::iter::repeat_n(1, want_redis_kills as usize));
    plan.extend(std::iter::repeat_n(2, want_stalls as usize));
    plan.extend(std::iter::repeat_n(4, want_long_stalls as usize));
    plan.extend(std::iter::repeat_n(5, want_partitions as usize));
    for i in (1..plan.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        plan.swap(i, j);
    }
    while !plan.is_empty() {
        if Instant::now() >= next_fault {
            if let Some(kind) = plan.pop() {
                match kind {
                    0 | 3 | 5 if pool.members.is_empty() => plan.push(kind),
                    0 => {
                        let i = rng.below(pool.members.len() as u64) as usize;
                        pool.members[i].proc.kill();
                        c.worker_kills += 1;
                    }
                    3 => {
                        let i = rng.below(pool.members.len() as u64) as usize;
                        pool.members[i].proc.terminate(Duration::from_secs(10));
                        c.graceful_stops += 1;
                    }
                    1 => {
                        redis.kill().expect("kill redis");
                        c.redis_kills += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        redis.restart().expect("restart redis");
                    }
                    2 => {
                        redis.pause().expect("SIGSTOP");
                        tokio::time::sleep(vt * 2 + vt / 2).await;
                        redis.resume().expect("SIGCONT");
                        c.redis_stalls += 1;
                    }
                    4 => {
                        redis.pause().expect("SIGSTOP");
                        tokio::time::sleep(COMMAND_TIMEOUT + vt).await;
                        redis.resume().expect("SIGCONT");
                        c.long_stalls += 1;
                    }
                    _ => {
                        let i = rng.below(pool.members.len() as u64) as usize;
                        pool.members[i].proxy.blackhole();
                        tokio::time::sleep(vt * 5 / 2).await;
                        pool.members[i].proxy.heal();
                        c.partitions += 1;
                    }
                }
            }
            next_fault += tick;
        }
        pool.supervise(workers);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (acked, errors, hung, strangers, outage_events, blocking) =
        producer.await.expect("producer");
    c.publish_errors = errors;

    // Quiescence: in every group, every acknowledged publish handled or dead-lettered, nothing
    // pending.
    let mut dlqs = Vec::new();
    for g in GROUPS {
        dlqs.push(bus.dead_letters("tasks", g).expect("dlq"));
    }
    eprintln!(
        "chaos: faults done after {} s; waiting for the groups to settle",
        started.elapsed().as_secs()
    );
    let deadline = Instant::now() + settle_for;
    let mut settled = false;
    let mut last_progress = Instant::now();
    while !settled && Instant::now() < deadline {
        pool.supervise(workers);
        let lines = read_ledgers(&dir.0);
        settled = true;
        for (g, dlq) in GROUPS.iter().zip(&dlqs) {
            let done = done_counts_in(&lines, g);
            let dead = dead_lettered(dlq).await;
            let open = acked
                .iter()
                .any(|n| !done.contains_key(n) && !dead.contains(n));
            let pend = integration_tests::pending_count(&bus, "tasks", g).await;
            settled &= !open && pend == Some(0);
            if last_progress.elapsed() > Duration::from_secs(10) {
                let open = acked
                    .iter()
                    .filter(|n| !done.contains_key(n) && !dead.contains(n))
                    .count();
                eprintln!(
                    "chaos: {} s: group {g}: {open} open, {pend:?} pending",
                    started.elapsed().as_secs()
                );
            }
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
        }
        if !settled {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for m in &mut pool.members {
        m.proc.terminate(Duration::from_secs(10));
    }

    // Duplicates a fault may cause: what was in flight in the processes it hit.
    let per_process = (concurrency * GROUPS.len()) as u64;
    let duplicates_bound = (c.worker_kills + c.graceful_stops + c.partitions) * per_process
        + (c.redis_kills + c.redis_stalls + c.long_stalls) * per_process * workers as u64
        + c.publish_errors;
    let lines = read_ledgers(&dir.0);
    let mut ok = true;
    let mut per_group = serde_json::Map::new();
    let (mut total_lost, mut total_dups, mut total_false, mut total_missed, mut total_pend) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut handled, mut dead_total) = (0u64, 0u64);
    for (g, dlq) in GROUPS.iter().zip(&dlqs) {
        let done = done_counts_in(&lines, g);
        let dead = dead_lettered(dlq).await;
        let lost: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|n| !done.contains_key(n) && !dead.contains(n))
            .collect();
        let duplicates: u64 = done.values().map(|c| c - 1).sum();
        let false_dead: Vec<u64> = dead
            .iter()
            .copied()
            .filter(|n| !poison.contains(n))
            .collect();
        let missed: Vec<u64> = poison
            .iter()
            .copied()
            .filter(|n| acked.contains(n) && !dead.contains(n))
            .collect();
        let pend = integration_tests::pending_count(&bus, "tasks", g)
            .await
            .unwrap_or(u64::MAX);
        if !lost.is_empty() {
            eprintln!("chaos: group {g} lost {:?}", &lost[..lost.len().min(20)]);
        }
        if !false_dead.is_empty() {
            eprintln!("chaos: group {g} dead-lettered innocent events {false_dead:?}");
            explain_dead_letters(dlq, &lines, &false_dead).await;
        }
        ok &= lost.is_empty() && false_dead.is_empty() && missed.is_empty() && pend == 0;
        per_group.insert(
            (*g).to_owned(),
            serde_json::json!({
                "handled": done.len(), "dead_lettered": dead.len(), "lost": lost.len(),
                "duplicates": duplicates, "false_dead_letters": false_dead.len(),
                "poison_not_dead_lettered": missed.len(), "pending_at_end": pend,
            }),
        );
        total_lost += lost.len() as u64;
        total_dups += duplicates;
        total_false += false_dead.len() as u64;
        total_missed += missed.len() as u64;
        total_pend = total_pend.saturating_add(pend);
        handled += done.len() as u64;
        dead_total += dead.len() as u64;
    }
    ok &= total_dups <= duplicates_bound;
    let report = serde_json::json!({
        "published": acked.len(),
        "groups": GROUPS.len(),
        "handled": handled,
        "dead_lettered": dead_total,
        "lost": total_lost,
        "duplicates": total_dups,
        "duplicates_bound": duplicates_bound,
        "worker_kills": c.worker_kills,
        "redis_kills": c.redis_kills,
        "graceful_stops": c.graceful_stops,
        "redis_stalls": c.redis_stalls,
        "long_stalls": c.long_stalls,
        "partitions": c.partitions,
        "hung_handlers": hung,
        "unknown_types": strangers,
        "outage_events": outage_events,
        "blocking_handlers": blocking,
        "publish_errors": c.publish_errors,
        "false_dead_letters": total_false,
        "poison_not_dead_lettered": total_missed,
        "pending_at_end": total_pend,
        "worker_processes": pool.spawned,
        "seconds": started.elapsed().as_secs(),
        "per_group": per_group,
        "ok": ok,
    });
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
        let Some(task) = d.decode::<Task>().ok().filter(|t| tasks.contains(&t.n)) else {
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
        if let Ok(t) = d.decode::<Task>() {
            out.insert(t.n);
        }
    }
    out
}
