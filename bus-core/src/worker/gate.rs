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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Held by an attempt while it runs.
pub(crate) enum Turn {
    /// Beside other attempts.
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    /// Alone in the process.
    Alone(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

impl Turn {
    pub(crate) fn is_alone(&self) -> bool {
        matches!(self, Turn::Alone(_))
    }
}

/// One per worker process, shared by all its groups.
#[derive(Clone, Default)]
pub(crate) struct SoloGate(Arc<RwLock<()>>);

impl SoloGate {
    /// A turn beside other attempts (waits while a suspect runs or waits to run).
    pub(crate) async fn shared(&self) -> Turn {
        Turn::Shared(self.0.clone().read_owned().await)
    }

    /// A turn alone, once every running attempt has finished; `None` when that takes longer than
    /// `wait` (attempts go on meanwhile; try again later).
    pub(crate) async fn alone(&self, wait: Duration) -> Option<Turn> {
        tokio::time::timeout(wait, self.0.clone().write_owned())
            .await
            .ok()
            .map(Turn::Alone)
    }
}

impl std::fmt::Debug for SoloGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoloGate").finish_non_exhaustive()
    }
}
