//! Time helpers. Due times and ages that Redis compares are taken on Redis's clock inside
//! scripts (`now_ms` in the script prelude); this is the process's clock, for figures that
//! only this process reads (metrics, publish stamps).

use std::time::{SystemTime, UNIX_EPOCH};

/// This process's wall clock, Unix ms (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
