//! What an attempt ended with, typed: the one place the names of dead-letter reasons are spelled
//! (metrics labels, dead-letter fields and script arguments all use [`Reason::as_str`]).

use std::time::Duration;

/// Why an entry went to the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The entry is not a readable envelope, or its payload does not decode into the event type.
    Decode,
    /// The handler returned [`HandlerError::reject`](crate::HandlerError::reject).
    Rejected,
    /// The last allowed attempt failed.
    MaxAttempts,
    /// No handler of the group knows the entry's event type (under the dead-letter policy).
    UnknownType,
    /// The last allowed attempt ran longer than the handler timeout.
    Timeout,
    /// The entry is larger than the subscriber's `max_entry_bytes`; it was not decoded.
    TooLarge,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Decode => "decode",
            Reason::Rejected => "rejected",
            Reason::MaxAttempts => "max_attempts",
            Reason::UnknownType => "unknown_type",
            Reason::Timeout => "timeout",
            Reason::TooLarge => "too_large",
        }
    }
}

/// Longest error text kept (dead letters, retry records, status): handler errors can be
/// arbitrarily long, and they are copied into Redis on every failure.
pub(crate) const MAX_ERROR_BYTES: usize = 4096;

/// `error`, cut to [`MAX_ERROR_BYTES`] on a character boundary, marked when cut.
pub(crate) fn bounded_error(mut error: String) -> String {
    if error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push_str("… [truncated]");
    }
    error
}

/// Why an entry was acknowledged without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// A replayed dead letter addressed to another group.
    OtherGroup,
    /// No handler of the group knows the event type (under the skip policy).
    UnknownType,
    /// The entry was deleted from the stream while pending.
    Deleted,
}

/// What to do with an entry after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled: acknowledge it.
    Ack,
    /// Not for this group: acknowledge it without running.
    Skip(SkipReason),
    /// The attempt failed: run it again after `delay` (`None`: the subscriber's backoff).
    Retry {
        delay: Option<Duration>,
        error: String,
        timed_out: bool,
    },
    /// Give up on it now.
    DeadLetter { reason: Reason, error: String },
}

impl Outcome {
    /// A failed attempt: a retry, unless it was the last allowed one.
    pub(crate) fn failed(
        error: String,
        delay: Option<Duration>,
        timed_out: bool,
        attempt: u32,
        max_attempts: u32,
    ) -> Outcome {
        let error = bounded_error(error);
        if attempt >= max_attempts {
            let reason = if timed_out {
                Reason::Timeout
            } else {
                Reason::MaxAttempts
            };
            Outcome::DeadLetter { reason, error }
        } else {
            Outcome::Retry {
                delay,
                error,
                timed_out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let e = bounded_error("é".repeat(5000));
        assert!(e.len() <= MAX_ERROR_BYTES + "… [truncated]".len());
        assert!(e.ends_with("[truncated]"));
        assert_eq!(bounded_error("short".into()), "short");
    }

    #[test]
    fn the_last_failed_attempt_is_a_dead_letter_with_its_cause() {
        let o = Outcome::failed("boom".into(), None, false, 3, 3);
        assert_eq!(
            o,
            Outcome::DeadLetter {
                reason: Reason::MaxAttempts,
                error: "boom".into()
            }
        );
        let o = Outcome::failed("slow".into(), None, true, 3, 3);
        assert!(matches!(
            o,
            Outcome::DeadLetter {
                reason: Reason::Timeout,
                ..
            }
        ));
        assert!(matches!(
            Outcome::failed("x".into(), None, false, 2, 3),
            Outcome::Retry { .. }
        ));
    }
}
