//! Counters and histograms through the `metrics` facade. Without an installed recorder
//! they cost next to nothing. Names:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `streambus_published_total` | counter | stream |
//! | `streambus_handled_total` | counter | stream, group |
//! | `streambus_failed_total` | counter | stream, group (handler errors and panics) |
//! | `streambus_retried_total` | counter | stream, group |
//! | `streambus_dead_lettered_total` | counter | stream, group, reason |
//! | `streambus_reclaimed_total` | counter | stream, group |
//! | `streambus_deleted_pending_total` | counter | stream, group |
//! | `streambus_group_recreated_total` | counter | stream, group |
//! | `streambus_lease_lost_total` | counter | stream, group |
//! | `streambus_timed_out_total` | counter | stream, group (attempts past the handler timeout) |
//! | `streambus_handler_blocking_total` | counter | stream, group (a handler held a runtime thread past the threshold without yielding) |
//! | `streambus_skipped_total` | counter | stream, group, reason (`unknown_type`) |
//! | `streambus_delayed_unmovable_total` | counter | stream (delayed events moved aside to `…:delayed-dlq`) |
//! | `streambus_handle_seconds` | histogram | stream, group |
//! | `streambus_publish_to_handle_seconds` | histogram | stream, group (producer clock to worker clock) |

use metrics::{counter, histogram, Counter, Histogram};

/// Pre-registered handles for one subscriber (no per-event label allocation).
pub(crate) struct SubscriberMetrics {
    pub(crate) handled: Counter,
    pub(crate) failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) reclaimed: Counter,
    pub(crate) deleted_pending: Counter,
    pub(crate) group_recreated: Counter,
    pub(crate) lease_lost: Counter,
    pub(crate) timed_out: Counter,
    pub(crate) handler_blocking: Counter,
    pub(crate) handle_seconds: Histogram,
    pub(crate) latency_seconds: Histogram,
    stream: String,
    group: String,
}

impl SubscriberMetrics {
    pub(crate) fn new(stream: &str, group: &str) -> Self {
        let l = |name: &'static str| counter!(name, "stream" => stream.to_owned(), "group" => group.to_owned());
        Self {
            handled: l("streambus_handled_total"),
            failed: l("streambus_failed_total"),
            retried: l("streambus_retried_total"),
            reclaimed: l("streambus_reclaimed_total"),
            deleted_pending: l("streambus_deleted_pending_total"),
            group_recreated: l("streambus_group_recreated_total"),
            lease_lost: l("streambus_lease_lost_total"),
            timed_out: l("streambus_timed_out_total"),
            handler_blocking: l("streambus_handler_blocking_total"),
            handle_seconds: histogram!("streambus_handle_seconds", "stream" => stream.to_owned(), "group" => group.to_owned()),
            latency_seconds: histogram!(
                "streambus_publish_to_handle_seconds",
                "stream" => stream.to_owned(),
                "group" => group.to_owned()
            ),
            stream: stream.to_owned(),
            group: group.to_owned(),
        }
    }

    pub(crate) fn skipped(&self, reason: &'static str) {
        counter!(
            "streambus_skipped_total",
            "stream" => self.stream.clone(),
            "group" => self.group.clone(),
            "reason" => reason
        )
        .increment(1);
    }

    pub(crate) fn dead_lettered(&self, reason: &str) {
        counter!(
            "streambus_dead_lettered_total",
            "stream" => self.stream.clone(),
            "group" => self.group.clone(),
            "reason" => reason.to_owned()
        )
        .increment(1);
    }
}

/// Delayed events of `stream` the mover moved aside.
pub(crate) fn delayed_unmovable(stream: &'static str) -> Counter {
    counter!("streambus_delayed_unmovable_total", "stream" => stream)
}

pub(crate) fn published(stream: &'static str, n: u64) {
    counter!("streambus_published_total", "stream" => stream).increment(n);
}
