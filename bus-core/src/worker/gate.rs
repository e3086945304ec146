//! The solo gate: lets one suspect attempt run alone in its worker process.
//!
//! An entry whose last attempt ended without an outcome (its process died or stalled) may be a
//! poison pill that kills any process running it. A crash while it ran beside other handlers says
//! nothing about which of them caused it, so that attempt is not charged; the entry then runs
//! alone in its process, and only a crash while alone counts against its attempt limit. Innocent
//! neighbours of a crash are therefore never dead-lettered for it.
//!
//! Every ordinary attempt holds a shared guard of the process-wide gate while it runs; a suspect
//! takes it exclusively. The lock is write-preferring: once a suspect waits, new attempts wait
//! behind it, so it gets its turn as soon as the running ones finish. The wait is bounded (see
//! [`SoloGate::alone`]), so a hung handler delays suspects instead of freezing the worker.
//!
//! A process holds one suspect at a time ([`SoloGate::reserve`]): the others are left to other
//! workers of the pool, which run them alone in parallel, and a poison pill that kills this
//! process does not take a queue of innocent suspects with it (they would only be reclaimed again
//! a visibility timeout later).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Held by an attempt while it runs.
pub(crate) enum Turn {
    /// Beside other attempts.
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    /// Alone in the process, as its one suspect.
    Alone(
        #[allow(dead_code)] OwnedRwLockWriteGuard<()>,
        #[allow(dead_code)] Reservation,
    ),
}

/// The right to hold this process's one suspect; given back on drop.
pub(crate) struct Reservation(Arc<Suspects>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.held.store(false, Ordering::Release);
        // Scanners may claim the next suspect now instead of at their next round.
        self.0.freed.notify_waiters();
    }
}

#[derive(Default)]
struct Suspects {
    held: AtomicBool,
    freed: Notify,
}

impl Turn {
    pub(crate) fn is_alone(&self) -> bool {
        matches!(self, Turn::Alone(..))
    }
}

/// One per worker process, shared by all its groups.
#[derive(Clone, Default)]
pub(crate) struct SoloGate {
    lock: Arc<RwLock<()>>,
    suspects: Arc<Suspects>,
}

impl SoloGate {
    /// A turn beside other attempts (waits while a suspect runs or waits to run).
    pub(crate) async fn shared(&self) -> Turn {
        Turn::Shared(self.lock.clone().read_owned().await)
    }

    /// Waits while a suspect runs or waits to run (the read loop reads nothing meanwhile: what it
    /// read would only wait, and be lost to a reclaim if the suspect kills the process).
    pub(crate) async fn wait_open(&self) {
        drop(self.lock.read().await);
    }

    /// The right to hold this process's one suspect, if no other suspect holds it.
    pub(crate) fn reserve(&self) -> Option<Reservation> {
        self.suspects
            .held
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Reservation(self.suspects.clone()))
    }

    /// Resolves when this process's suspect slot is given back.
    pub(crate) async fn suspect_freed(&self) {
        self.suspects.freed.notified().await;
    }

    /// A turn alone, once every running attempt has finished; `None` when that takes longer than
    /// `wait` (attempts go on meanwhile; try again later).
    pub(crate) async fn alone(
        &self,
        reservation: Reservation,
        wait: Duration,
    ) -> Result<Turn, Reservation> {
        match tokio::time::timeout(wait, self.lock.clone().write_owned()).await {
            Ok(guard) => Ok(Turn::Alone(guard, reservation)),
            Err(_) => Err(reservation),
        }
    }
}

impl std::fmt::Debug for SoloGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoloGate").finish_non_exhaustive()
    }
}
