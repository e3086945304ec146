//! The rules for Streambus names (stream, group, prefix, header and consumer names).
//!
//! `bus-core` checks names with them at run time (`bus_core::validate_name`) and `bus-macros`
//! checks the names written in `#[subscriber(group = "...")]` and `#[event(stream = "...")]` with
//! them at compile time. They live in this crate of their own because a proc-macro crate cannot
//! depend on `bus-core`, which depends on it; keeping one copy means the two checks cannot drift.
//! Use them through `bus-core`.

#![no_std]

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why `name` is not a valid name, or `None` if it is one.
///
/// A name is non-empty, at most [`MAX_NAME_LEN`] bytes long, and has no `{`, `}` (they delimit
/// the Redis Cluster hash tag in keys), whitespace or control characters.
///
/// ```
/// assert_eq!(bus_names::name_error("orders"), None);
/// assert_eq!(bus_names::name_error("bill ing"), Some("must not contain whitespace"));
/// ```
pub fn name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("must be at most 128 bytes long")
    } else if name.contains(['{', '}']) {
        Some("must not contain '{' or '}'")
    } else if name.chars().any(char::is_whitespace) {
        Some("must not contain whitespace")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::ToString;

    #[test]
    fn accepts_ordinary_names() {
        let longest = "x".repeat(MAX_NAME_LEN);
        for name in ["orders", "billing-v2", "a.b_c:d", "Ünïcode", &longest] {
            assert_eq!(name_error(name), None, "{name}");
        }
    }

    #[test]
    fn rejects_bad_names_with_the_reason() {
        let too_long = "x".repeat(MAX_NAME_LEN + 1);
        let cases = [
            ("", "must not be empty"),
            (too_long.as_str(), "must be at most 128 bytes long"),
            ("a{b", "must not contain '{' or '}'"),
            ("a}b", "must not contain '{' or '}'"),
            ("a b", "must not contain whitespace"),
            ("a\tb", "must not contain whitespace"),
            ("a\nb", "must not contain whitespace"),
            ("a\u{7}b", "must not contain control characters"),
        ];
        for (name, reason) in cases {
            assert_eq!(name_error(name), Some(reason), "{name:?}");
        }
    }

    #[test]
    fn the_length_message_states_the_limit() {
        let too_long = "x".repeat(MAX_NAME_LEN + 1);
        let reason = name_error(&too_long).unwrap_or_default();
        assert!(reason.contains(&MAX_NAME_LEN.to_string()), "{reason}");
    }
}
