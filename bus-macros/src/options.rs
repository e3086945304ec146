//! The `#[subscriber]` option values: their checks, and the `SubscriberOptions` builder calls
//! they become.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};

use crate::args::{Millis, Spanned, StartFrom, SubscriberArgs, UnknownTypes};
use crate::paths::{local, private};

/// Shortest visibility timeout: workers renew leases every third of it with a Redis round trip;
/// below this, a round trip leaves no margin and running entries would be taken over.
const MIN_VISIBILITY_TIMEOUT_MS: u64 = 100;

/// Checks every value; returns the group name and all the errors found.
pub(crate) fn check(args: &SubscriberArgs, attr_span: Span) -> (String, Vec<syn::Error>) {
    let mut errors = Vec::new();
    let mut fail = |span: Span, message: String| errors.push(syn::Error::new(span, message));

    let group = match &args.group {
        Some(g) => {
            if let Some(reason) = bus_names::name_error(&g.value) {
                fail(g.span, format!("invalid group name: {reason}"));
            }
            g.value.clone()
        }
        // A `group` that did not parse was reported as such.
        None if args.malformed.iter().any(|key| key == "group") => String::new(),
        None => {
            fail(
                attr_span,
                "missing required option `group`, e.g. #[subscriber(group = \"billing\")]".into(),
            );
            String::new()
        }
    };
    for (name, value) in [
        ("concurrency", &args.concurrency),
        ("max_held", &args.max_held),
        ("max_entry_bytes", &args.max_entry_bytes),
    ] {
        if let Some(v) = value.as_ref().filter(|v| v.value == 0) {
            fail(v.span, format!("{name} must be at least 1"));
        }
    }
    if let Some(m) = &args.max_attempts {
        if m.value == 0 || m.value > u64::from(u32::MAX) {
            fail(
                m.span,
                format!("max_attempts must be between 1 and {}", u32::MAX),
            );
        }
    }
    if let Some(v) = &args.visibility_timeout {
        if v.value < MIN_VISIBILITY_TIMEOUT_MS {
            fail(
                v.span,
                format!("visibility_timeout must be at least {MIN_VISIBILITY_TIMEOUT_MS}ms"),
            );
        }
    }
    // Zero is always a mistake: XREADGROUP would block forever, a status record would expire at
    // once, and the worker refuses a zero handler timeout when it starts (better caught here).
    for (name, value) in [
        ("block_timeout", &args.block_timeout),
        ("handler_timeout", &args.handler_timeout),
        ("status_ttl", &args.status_ttl),
        ("status_safety_ttl", &args.status_safety_ttl),
    ] {
        if let Some(v) = value.as_ref().filter(|v| v.value == 0) {
            fail(v.span, format!("{name} must be above zero"));
        }
    }
    if let (Some(lo), Some(hi)) = (&args.backoff_min, &args.backoff_max) {
        if lo.value > hi.value {
            fail(hi.span, "backoff_max must not be below backoff_min".into());
        }
    }
    if let (Some(ttl), Some(safety)) = (&args.status_ttl, &args.status_safety_ttl) {
        if safety.value < ttl.value {
            fail(
                safety.span,
                "status_safety_ttl must not be below status_ttl".into(),
            );
        }
    }
    (group, errors)
}

/// The body of the generated `Subscriber::options`: `SubscriberOptions::new(group)` followed by
/// one builder call per option given (the others keep `bus_core`'s defaults).
pub(crate) fn options_body(args: &SubscriberArgs, group: &str) -> TokenStream {
    let p = private();
    let mut calls = Vec::new();
    let mut call = |method: &str, value: TokenStream, span: Span| {
        let method = syn::Ident::new(method, span);
        calls.push(quote!(.#method(#value)));
    };
    // Counts are written unsuffixed, at the user's literal, so the builder's parameter type
    // (`usize`, `u32` or `u64`) is inferred and an overflow is reported where it was written.
    let counts = [
        ("concurrency", &args.concurrency),
        ("max_attempts", &args.max_attempts),
        ("prefetch", &args.prefetch),
        ("max_held", &args.max_held),
        ("max_entry_bytes", &args.max_entry_bytes),
        ("max_dead_letters", &args.max_dead_letters),
        ("max_result_bytes", &args.max_result_bytes),
    ];
    for (method, value) in counts {
        if let Some(v) = value {
            let mut lit = Literal::u64_unsuffixed(v.value);
            lit.set_span(v.span);
            call(method, quote!(#lit), v.span);
        }
    }
    let durations = [
        ("visibility_timeout", &args.visibility_timeout),
        ("block_timeout", &args.block_timeout),
        ("backoff_min", &args.backoff_min),
        ("backoff_max", &args.backoff_max),
        ("handler_timeout", &args.handler_timeout),
    ];
    for (method, value) in durations {
        if let Some(v) = value {
            call(method, duration(v), v.span);
        }
    }
    if let Some(v) = &args.start_from {
        let variant = match v.value {
            StartFrom::Beginning => quote!(Beginning),
            StartFrom::NewEvents => quote!(NewEvents),
        };
        call("start_from", quote!(#p::StartFrom::#variant), v.span);
    }
    if let Some(v) = &args.track_status {
        let on = v.value;
        call("track_status", quote!(#on), v.span);
    }
    if let Some(v) = &args.blocking {
        let on = v.value;
        call("blocking", quote!(#on), v.span);
    }
    if let Some(v) = &args.unknown_types {
        let variant = match v.value {
            UnknownTypes::Skip => quote!(Skip),
            UnknownTypes::DeadLetter => quote!(DeadLetter),
        };
        call("unknown_types", quote!(#p::UnknownTypes::#variant), v.span);
    }
    let new_options = quote!(#p::SubscriberOptions::new(#group) #(#calls)*);
    with_status_ttl(args, new_options)
}

/// `status_ttl(after_completion, safety)` takes both TTLs at once. When only one is given, the
/// other keeps the value the options already have, read back rather than copied from
/// `bus_core`'s defaults.
fn with_status_ttl(args: &SubscriberArgs, options: TokenStream) -> TokenStream {
    let p = private();
    let (current, after, safety) = (local("options"), local("after"), local("safety"));
    match (&args.status_ttl, &args.status_safety_ttl) {
        (None, None) => options,
        (Some(a), Some(s)) => {
            let (a, s) = (duration(a), duration(s));
            quote!(#options.status_ttl(#a, #s))
        }
        (given_after, given_safety) => {
            let a = given_after.as_ref().map_or(quote!(#after), duration);
            let s = given_safety.as_ref().map_or(quote!(#safety), duration);
            quote! {
                let #current = #options;
                let (#after, #safety) = #p::SubscriberOptions::get_status_ttl(&#current);
                #p::SubscriberOptions::status_ttl(#current, #a, #s)
            }
        }
    }
}

fn duration(v: &Spanned<Millis>) -> TokenStream {
    let p = private();
    let ms = Literal::u64_suffixed(v.value);
    quote_spanned!(v.span=> #p::Duration::from_millis(#ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(tokens: TokenStream) -> String {
        let (args, parse_errors) = SubscriberArgs::parse(tokens);
        assert!(parse_errors.is_empty(), "{parse_errors:?}");
        let (_, errors) = check(&args, Span::call_site());
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn accepts_good_values() {
        let e = errors(quote!(
            group = "billing",
            concurrency = 1,
            max_attempts = 4294967295,
            visibility_timeout = "100ms",
            backoff_min = "1s",
            backoff_max = "1s",
            status_ttl = "1h",
            status_safety_ttl = "1h",
            prefetch = 0,
            max_dead_letters = 0,
            max_result_bytes = 0
        ));
        assert_eq!(e, "");
    }

    #[test]
    fn rejects_bad_values() {
        let cases = [
            (quote!(), "missing required option `group`"),
            (
                quote!(group = "a b"),
                "invalid group name: must not contain whitespace",
            ),
            (quote!(group = ""), "invalid group name: must not be empty"),
            (
                quote!(group = "g", concurrency = 0),
                "concurrency must be at least 1",
            ),
            (
                quote!(group = "g", max_held = 0),
                "max_held must be at least 1",
            ),
            (
                quote!(group = "g", max_entry_bytes = 0),
                "max_entry_bytes must be at least 1",
            ),
            (
                quote!(group = "g", max_attempts = 0),
                "max_attempts must be between 1",
            ),
            (
                quote!(group = "g", max_attempts = 4294967296),
                "max_attempts must be between 1",
            ),
            (
                quote!(group = "g", visibility_timeout = "99ms"),
                "at least 100ms",
            ),
            (
                quote!(group = "g", block_timeout = "0s"),
                "block_timeout must be above zero",
            ),
            (
                quote!(group = "g", timeout = "0ms"),
                "handler_timeout must be above zero",
            ),
            (
                quote!(group = "g", status_ttl = "0s"),
                "status_ttl must be above zero",
            ),
            (
                quote!(group = "g", backoff_min = "2s", backoff_max = "1s"),
                "backoff_max must not be below backoff_min",
            ),
            (
                quote!(group = "g", status_ttl = "2h", status_safety_ttl = "1h"),
                "status_safety_ttl must not be below status_ttl",
            ),
        ];
        for (tokens, want) in cases {
            let e = errors(tokens);
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn a_malformed_group_is_not_also_missing() {
        let (args, parse_errors) = SubscriberArgs::parse(quote!(group = 5));
        assert_eq!(parse_errors.len(), 1);
        assert!(check(&args, Span::call_site()).1.is_empty());
    }

    #[test]
    fn reports_every_bad_value_at_once() {
        let e = errors(quote!(group = "a b", concurrency = 0, max_held = 0));
        assert_eq!(e.lines().count(), 3, "{e}");
    }

    #[test]
    fn emits_one_builder_call_per_option_given() {
        let (args, _) = SubscriberArgs::parse(quote!(group = "g", prefetch = 64));
        let body = options_body(&args, "g").to_string();
        assert!(body.contains(". prefetch (64)"), "{body}");
        assert!(!body.contains("concurrency"), "{body}");
        assert!(!body.contains("status_ttl"), "{body}");
        assert!(!body.contains("blocking"), "{body}");
    }

    #[test]
    fn emits_the_blocking_switch_as_written() {
        let (args, _) = SubscriberArgs::parse(quote!(group = "g", blocking));
        let body = options_body(&args, "g").to_string();
        assert!(body.contains(". blocking (true)"), "{body}");
        let (args, _) = SubscriberArgs::parse(quote!(group = "g", blocking = false));
        let body = options_body(&args, "g").to_string();
        assert!(body.contains(". blocking (false)"), "{body}");
    }
}
