//! The held-entry table: every entry this consumer owns in Redis and is responsible for, with the
//! typed state it is in.
//!
//! ```text
//!            read (`>`)                    reclaimed / own pending at start
//!               │                                   │
//!               ▼                                   ▼
//!           ┌────────┐                         ┌─────────┐
//!           │ Queued │                         │ Claimed │──── take: not due ───┐
//!           └────────┘                         └─────────┘                      │
//!               │ slot free                         │ take (attempt check)      ▼
//!               ▼                                   ▼                      ┌─────────┐
//!           ┌──────────────────────────────────────────┐   retry recorded  │ Waiting │
//!           │                 Running                  │──────────────────▶│         │
//!           └──────────────────────────────────────────┘                   └─────────┘
//!               │ dead-letter      │ ack / skip                ▲     │ due: take
//!               ▼                  ▼                          │     ▼
//!           settled (removed)   Acking ── XACK sent ──▶ removed   └── Running …
//! ```
//!
//! Every transition names the [`Token`] of the state it leaves, so a task can only move or remove
//! the state it owns: a zombie attempt (one whose lease was lost and whose entry is now running
//! again) cannot remove the newer attempt's state. Entries lost to another consumer are removed
//! by the heartbeat whatever their state. The heartbeat renews every held entry; shutdown releases
//! whatever is left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// A priority lane: index into the group's lanes, highest priority first.
pub(crate) type Lane = usize;

/// Identifies one state of one held entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(u64);

/// What this consumer is doing with an entry it owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Read through `>` (delivery 1, never started), waiting for a slot.
    Queued,
    /// Claimed by the scanner, found in this consumer's pending list, or a read whose reply was
    /// lost; about to be taken through the attempt check.
    Claimed,
    /// Waiting for its retry to be due.
    Waiting,
    /// A handler runs it: attempt `attempt`, fenced by the delivery count `delivery`.
    Running { attempt: u32, delivery: u32 },
    /// Settled here; its `XACK` is queued or in flight. Still renewed, so a busy process whose
    /// ack waits does not lose the entry to another worker, which would run it again.
    Acking,
}

struct Held {
    token: Token,
    phase: Phase,
    /// The task that owns the state (a retry timer or a take), aborted when the entry is lost.
    task: Option<AbortHandle>,
}

/// Every entry this consumer holds, per lane.
pub(crate) struct HeldTable {
    inner: Mutex<Inner>,
    /// Woken when an entry leaves the table while the read loop waits for room.
    left: Notify,
    /// Set while the read loop waits for room (so settling an entry costs no wake-up otherwise).
    waiting: AtomicBool,
}

struct Inner {
    lanes: Vec<HashMap<String, Held>>,
    next_token: u64,
    len: usize,
}

impl HeldTable {
    pub(crate) fn new(lanes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lanes: (0..lanes).map(|_| HashMap::new()).collect(),
                next_token: 0,
                len: 0,
            }),
            left: Notify::new(),
            waiting: AtomicBool::new(false),
        }
    }

    fn entry_left(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.left.notify_waiters();
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    /// Starts holding an entry. `None` when it is held already (its owner task goes on).
    pub(crate) fn insert(&self, lane: Lane, id: &str, phase: Phase) -> Option<Token> {
        self.with(|t| {
            let token = Token(t.next_token);
            let map = t.lanes.get_mut(lane)?;
            if map.contains_key(id) {
                return None;
            }
            map.insert(
                id.to_owned(),
                Held {
                    token,
                    phase,
                    task: None,
                },
            );
            t.next_token += 1;
            t.len += 1;
            Some(token)
        })
        .flatten()
    }

    /// Moves an entry from the state `from` to `phase`; `None` when `from` is no longer its state.
    pub(crate) fn advance(&self, lane: Lane, id: &str, from: Token, phase: Phase) -> Option<Token> {
        self.with(|t| {
            let token = Token(t.next_token);
            let held = t.lanes.get_mut(lane)?.get_mut(id)?;
            if held.token != from {
                return None;
            }
            *held = Held {
                token,
                phase,
                task: None,
            };
            t.next_token += 1;
            Some(token)
        })
        .flatten()
    }

    /// Attaches the task that owns state `token`, if the entry is still in it.
    pub(crate) fn attach(&self, lane: Lane, id: &str, token: Token, task: AbortHandle) {
        let stale = self
            .with(
                |t| match t.lanes.get_mut(lane).and_then(|m| m.get_mut(id)) {
                    Some(held) if held.token == token => {
                        held.task = Some(task.clone());
                        false
                    }
                    _ => true,
                },
            )
            .unwrap_or(true);
        if stale {
            // The entry left that state before its task was attached (lost, or shut down).
            task.abort();
        }
    }

    /// Stops holding an entry, if it is still in state `token`. True when it was.
    pub(crate) fn remove(&self, lane: Lane, id: &str, token: Token) -> bool {
        let removed = self
            .with(|t| {
                let map = t.lanes.get_mut(lane)?;
                if map.get(id)?.token != token {
                    return None;
                }
                map.remove(id);
                t.len -= 1;
                Some(())
            })
            .flatten()
            .is_some();
        if removed {
            self.entry_left();
        }
        removed
    }

    /// Stops holding an entry whatever its state (its lease is lost, or it was deleted), and
    /// aborts the task waiting on it. A running handler goes on; its outcome is fenced in Redis.
    pub(crate) fn forget(&self, lane: Lane, id: &str) -> Option<Phase> {
        let held = self
            .with(|t| {
                let held = t.lanes.get_mut(lane)?.remove(id)?;
                t.len -= 1;
                Some(held)
            })
            .flatten()?;
        if let Some(task) = held.task {
            if !matches!(held.phase, Phase::Running { .. }) {
                task.abort();
            }
        }
        self.entry_left();
        Some(held.phase)
    }

    /// Whether an entry is held.
    #[cfg(test)]
    pub(crate) fn contains(&self, lane: Lane, id: &str) -> bool {
        self.with(|t| t.lanes.get(lane).is_some_and(|m| m.contains_key(id)))
            .unwrap_or(false)
    }

    /// How many entries are held.
    pub(crate) fn len(&self) -> usize {
        self.with(|t| t.len).unwrap_or(0)
    }

    /// Waits until `has_room` holds, re-checking each time an entry leaves the table.
    pub(crate) async fn wait_for_room(&self, has_room: impl Fn() -> bool) {
        loop {
            let left = self.left.notified();
            self.waiting.store(true, Ordering::SeqCst);
            if has_room() {
                self.waiting.store(false, Ordering::SeqCst);
                return;
            }
            left.await;
        }
    }

    /// The ids held in one lane.
    pub(crate) fn ids(&self, lane: Lane) -> Vec<String> {
        self.with(|t| {
            t.lanes
                .get(lane)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// Every held entry of one lane with its state.
    pub(crate) fn phases(&self, lane: Lane) -> Vec<(String, Phase)> {
        self.with(|t| {
            t.lanes
                .get(lane)
                .map(|m| m.iter().map(|(id, h)| (id.clone(), h.phase)).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// Aborts the tasks of entries that are not running (retry timers, takes): shutdown.
    pub(crate) fn abort_waiting(&self) {
        let tasks: Vec<AbortHandle> = self
            .with(|t| {
                t.lanes
                    .iter()
                    .flat_map(HashMap::values)
                    .filter(|h| !matches!(h.phase, Phase::Running { .. }))
                    .filter_map(|h| h.task.clone())
                    .collect()
            })
            .unwrap_or_default();
        for task in tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_token_neither_moves_nor_removes_a_newer_state() {
        let t = HeldTable::new(1);
        let first = t.insert(0, "1-0", Phase::Queued).expect("new");
        let running = t
            .advance(
                0,
                "1-0",
                first,
                Phase::Running {
                    attempt: 1,
                    delivery: 1,
                },
            )
            .expect("advance");
        // A zombie holding the old token cannot touch the newer state.
        assert!(t.advance(0, "1-0", first, Phase::Waiting).is_none());
        assert!(!t.remove(0, "1-0", first));
        assert!(t.contains(0, "1-0"));
        assert!(t.remove(0, "1-0", running));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn an_entry_is_held_once() {
        let t = HeldTable::new(2);
        assert!(t.insert(1, "1-0", Phase::Claimed).is_some());
        assert!(t.insert(1, "1-0", Phase::Claimed).is_none());
        assert!(t.insert(0, "1-0", Phase::Claimed).is_some());
        assert_eq!(t.len(), 2);
        assert_eq!(t.forget(1, "1-0"), Some(Phase::Claimed));
        assert_eq!(t.len(), 1);
    }
}
