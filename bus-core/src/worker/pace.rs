//! Adaptive read-ahead: how many entries a worker reads beyond its free handler slots.
//!
//! A worker that reads only what its free slots can run makes one read round trip per
//! `concurrency` entries, so with fast handlers it waits on Redis most of the time. Reading ahead
//! fixes that, but every entry read is owned by this consumer and invisible to the rest of the
//! pool until it runs, so the allowance follows what was measured (Little's law):
//!
//! - `ahead ≈ concurrency × 2 × read round trip ÷ slot time`: the entries the worker starts during
//!   two read round trips, so the next read is back before the queue runs dry;
//! - at most [`MAX_WAIT`] of work queued (`concurrency × MAX_WAIT ÷ slot time`), so an entry never
//!   waits unstarted for long and slow handlers keep strict back-pressure (with 20 ms handlers
//!   and a sub-millisecond round trip, the allowance is 0 or 1);
//! - at most [`MAX_BYTES`] of entries and [`MAX_AHEAD`] entries;
//! - none while more than one attempt in ten fails (an outage: failed entries wait for their
//!   retries in the worker, and the backlog belongs in the stream) and none before
//!   [`WARM_UP`] attempts were measured.
//!
//! The figures are moving averages kept in atomics: handler tasks update them without a lock,
//! and an update lost to a race only makes the average a little older.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Most entries read ahead.
pub(crate) const MAX_AHEAD: usize = 256;
/// Most work (in slot time) queued ahead.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(50);
/// Most bytes of entries read ahead.
pub(crate) const MAX_BYTES: u64 = 8 << 20;
/// Attempts measured before anything is read ahead.
pub(crate) const WARM_UP: u64 = 64;
/// Read ahead only while at most this share of attempts fails.
const MAX_FAILING: f64 = 0.1;

/// Moving averages of what sets the read-ahead.
#[derive(Default)]
pub(crate) struct Pace {
    /// How long an attempt holds its slot, ns.
    slot_ns: Ewma,
    /// Round trip of a read that returned at once, ns.
    read_ns: Ewma,
    /// Size of an entry (field names and values), bytes.
    entry_bytes: Ewma,
    /// Share of attempts that did not succeed, 0–1.
    failing: Ewma,
    attempts: AtomicU64,
}

impl Pace {
    /// One attempt held its slot for `held` and succeeded or not.
    pub(crate) fn attempt(&self, held: Duration, ok: bool) {
        self.slot_ns.add(held.as_nanos() as f64, 16.0);
        self.failing.add(if ok { 0.0 } else { 1.0 }, 32.0);
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// A read that did not block came back after `rtt` with entries of `bytes` in total.
    pub(crate) fn read(&self, rtt: Duration, entries: usize, bytes: usize) {
        self.read_ns.add(rtt.as_nanos() as f64, 8.0);
        if entries > 0 {
            self.entry_bytes.add(bytes as f64 / entries as f64, 16.0);
        }
    }

    /// The read-ahead allowance for a worker with `concurrency` slots.
    pub(crate) fn ahead(&self, concurrency: usize) -> usize {
        if self.attempts.load(Ordering::Relaxed) < WARM_UP || self.failing.get() > MAX_FAILING {
            return 0;
        }
        let (slot, rtt) = (self.slot_ns.get().max(1.0), self.read_ns.get());
        let c = concurrency as f64;
        let per_round_trips = c * 2.0 * rtt / slot;
        let per_wait = c * MAX_WAIT.as_nanos() as f64 / slot;
        let per_bytes = MAX_BYTES as f64 / self.entry_bytes.get().max(1.0);
        per_round_trips
            .min(per_wait)
            .min(per_bytes)
            .min(MAX_AHEAD as f64)
            .max(0.0) as usize
    }
}

/// An exponentially weighted moving average in an atomic (`f64` bits); the first sample sets it.
#[derive(Default)]
struct Ewma(AtomicU64);

impl Ewma {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Moves the average `1 / weight` of the way to `sample`.
    fn add(&self, sample: f64, weight: f64) {
        let old = self.get();
        let new = if old == 0.0 {
            sample
        } else {
            old + (sample - old) / weight
        };
        self.0.store(new.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(slot: Duration, rtt: Duration, ok: bool) -> Pace {
        let p = Pace::default();
        for _ in 0..WARM_UP {
            p.attempt(slot, ok);
        }
        p.read(rtt, 32, 32 * 200);
        p
    }

    #[test]
    fn nothing_ahead_before_the_warm_up() {
        let p = Pace::default();
        p.attempt(Duration::from_micros(10), true);
        p.read(Duration::from_micros(300), 32, 6400);
        assert_eq!(p.ahead(32), 0);
    }

    #[test]
    fn fast_handlers_read_up_to_the_cap() {
        let p = measured(Duration::from_micros(10), Duration::from_micros(300), true);
        assert_eq!(p.ahead(32), MAX_AHEAD);
    }

    #[test]
    fn twenty_ms_handlers_keep_strict_back_pressure() {
        let p = measured(Duration::from_millis(20), Duration::from_micros(500), true);
        assert!(p.ahead(32) <= 1, "{}", p.ahead(32));
        // Even on a slow network, at most 50 ms of work waits.
        let p = measured(Duration::from_millis(20), Duration::from_millis(100), true);
        assert!(p.ahead(32) <= 80, "{}", p.ahead(32));
    }

    #[test]
    fn large_entries_are_capped_by_memory() {
        let p = measured(Duration::from_micros(10), Duration::from_micros(300), true);
        p.read(Duration::from_micros(300), 1, 1 << 20);
        for _ in 0..64 {
            p.read(Duration::from_micros(300), 1, 1 << 20);
        }
        assert!(p.ahead(32) <= 9, "{}", p.ahead(32));
    }

    #[test]
    fn failing_attempts_stop_the_read_ahead() {
        let p = measured(Duration::from_micros(10), Duration::from_micros(300), false);
        assert_eq!(p.ahead(32), 0);
    }
}
