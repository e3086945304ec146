//! The solo gate: lets one suspect attempt run alone in its worker process.
//!
//! An entry whose last attempt ended without an outcome (its process died or stalled) may be a
//! poison pill that kills any process running it. A crash while it ran beside other handlers says
//! nothing about which of them caused it, so that attempt is not charged; the entry then runs
//! alone in its process, and only a crash while alone counts against its attempt limit. Innocent
//! neighbours of a crash are therefore never dead-lettered for it.
//!
//! Every ordinary attempt holds a shared turn while it runs; a suspect takes the gate alone. Once
//! a suspect waits, new attempts wait behind it, so it gets its turn as soon as the running ones
//! finish. The wait is bounded (see [`SoloGate::alone`]), so a hung handler delays suspects
//! instead of freezing the worker.
//!
//! A process holds one suspect at a time ([`SoloGate::reserve`]): the others are left to other
//! workers of the pool, which run them alone in parallel, and a poison pill that kills this
//! process does not take a queue of innocent suspects with it (they would only be reclaimed again
//! a visibility timeout later).
//!
//! Every attempt passes the gate, so its shared path is two atomic operations on the way in and
//! two on the way out (no lock): an attempt counts itself as running, then checks that no suspect
//! wants the process; a suspect announces itself, then waits for the count to reach zero. Both
//! sides use sequentially consistent operations, so at least one of them sees the other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    /// Attempts running with a shared turn.
    running: AtomicUsize,
    /// A suspect waits for the process, or runs alone.
    solo: AtomicBool,
    /// The suspect slot is taken (see [`SoloGate::reserve`]).
    suspect_held: AtomicBool,
    /// Woken when `running` drops to zero while a suspect waits, when `solo` ends, and when the
    /// suspect slot frees.
    changed: Notify,
}

/// Held by an attempt while it runs; dropping it ends the turn.
pub(crate) enum Turn {
    /// Beside other attempts.
    Shared(#[allow(dead_code)] SharedTurn),
    /// Alone in the process, as its one suspect.
    Alone(#[allow(dead_code)] AloneTurn),
}

impl Turn {
    pub(crate) fn is_alone(&self) -> bool {
        matches!(self, Turn::Alone(..))
    }
}

pub(crate) struct SharedTurn(Arc<State>);

impl Drop for SharedTurn {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.solo.load(Ordering::SeqCst)
        {
            self.0.changed.notify_waiters();
        }
    }
}

pub(crate) struct AloneTurn {
    state: Arc<State>,
    _reservation: Reservation,
}

impl Drop for AloneTurn {
    fn drop(&mut self) {
        self.state.solo.store(false, Ordering::SeqCst);
        self.state.changed.notify_waiters();
    }
}

/// The right to hold this process's one suspect; given back on drop.
pub(crate) struct Reservation(Arc<State>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.suspect_held.store(false, Ordering::SeqCst);
        // Scanners may claim the next suspect now instead of at their next round.
        self.0.changed.notify_waiters();
    }
}

/// One per worker process, shared by all its groups.
#[derive(Clone, Default)]
pub(crate) struct SoloGate(Arc<State>);

impl SoloGate {
    /// A turn beside other attempts (waits while a suspect runs or waits to run).
    pub(crate) async fn shared(&self) -> Turn {
        let s = &self.0;
        loop {
            s.running.fetch_add(1, Ordering::SeqCst);
            if !s.solo.load(Ordering::SeqCst) {
                return Turn::Shared(SharedTurn(self.0.clone()));
            }
            // A suspect wants the process: step back (waking it if this was the last one) and
            // wait until it is done.
            drop(SharedTurn(self.0.clone()));
            self.wait_open().await;
        }
    }

    /// Waits while a suspect runs or waits to run (the read loop reads nothing meanwhile: what it
    /// read would only wait, and be lost to a reclaim if the suspect kills the process).
    pub(crate) async fn wait_open(&self) {
        loop {
            let changed = self.0.changed.notified();
            if !self.0.solo.load(Ordering::SeqCst) {
                return;
            }
            changed.await;
        }
    }

    /// The right to hold this process's one suspect, if no other suspect holds it.
    pub(crate) fn reserve(&self) -> Option<Reservation> {
        self.0
            .suspect_held
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Reservation(self.0.clone()))
    }

    /// Resolves when this process's suspect slot is given back (or the gate otherwise changes).
    pub(crate) async fn suspect_freed(&self) {
        self.0.changed.notified().await;
    }

    /// A turn alone, once every running attempt has finished (new attempts wait meanwhile);
    /// the reservation back when that takes longer than `wait` (attempts go on; try again later).
    pub(crate) async fn alone(
        &self,
        reservation: Reservation,
        wait: Duration,
    ) -> Result<Turn, Reservation> {
        let s = &self.0;
        // Only the holder of the reservation sets `solo`, so it is ours alone.
        s.solo.store(true, Ordering::SeqCst);
        let drained = tokio::time::timeout(wait, async {
            loop {
                let changed = s.changed.notified();
                if s.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                changed.await;
            }
        })
        .await;
        match drained {
            Ok(()) => Ok(Turn::Alone(AloneTurn {
                state: self.0.clone(),
                _reservation: reservation,
            })),
            Err(_) => {
                s.solo.store(false, Ordering::SeqCst);
                s.changed.notify_waiters();
                Err(reservation)
            }
        }
    }
}

impl std::fmt::Debug for SoloGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoloGate")
            .field("running", &self.0.running.load(Ordering::Relaxed))
            .field("solo", &self.0.solo.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_suspect_runs_only_once_the_running_attempts_are_done_and_blocks_new_ones() {
        let gate = SoloGate::default();
        let first = gate.shared().await;
        let r = gate.reserve().expect("free");
        assert!(gate.reserve().is_none(), "one suspect per process");
        let g2 = gate.clone();
        let alone = tokio::spawn(async move { g2.alone(r, Duration::from_secs(5)).await.is_ok() });
        // The suspect waits for `first`; a new attempt waits behind the suspect.
        tokio::task::yield_now().await;
        let g3 = gate.clone();
        let mut later = tokio::spawn(async move { g3.shared().await.is_alone() });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut later)
                .await
                .is_err(),
            "a new attempt must wait while a suspect waits"
        );
        drop(first);
        assert!(alone.await.expect("join"), "the suspect gets its turn");
        assert!(!later.await.expect("join"), "then the waiting attempt runs");
        assert!(gate.reserve().is_some(), "the slot is free again");
    }

    #[tokio::test]
    async fn a_suspect_gives_way_when_a_handler_does_not_finish() {
        let gate = SoloGate::default();
        let hung = gate.shared().await;
        let r = gate.reserve().expect("free");
        let Err(r) = gate.alone(r, Duration::from_millis(30)).await else {
            panic!("the suspect must give way to a hung handler");
        };
        // New attempts may run again meanwhile.
        let other = tokio::time::timeout(Duration::from_secs(1), gate.shared())
            .await
            .expect("not blocked");
        drop((hung, other, r));
    }
}
