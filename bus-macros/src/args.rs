//! Parsing of the `#[subscriber(...)]` attribute into [`SubscriberArgs`]. Only the syntax and the
//! literal kinds are checked here; `options.rs` checks the values.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser as _};
use syn::spanned::Spanned as _;
use syn::{LitBool, LitInt, LitStr, Token};

use crate::duration::parse_duration_ms;

/// A parsed option value with the span of its literal, for diagnostics.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// A duration, in milliseconds.
pub(crate) type Millis = u64;

/// `start_from`: mirrors `bus_core::StartFrom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartFrom {
    Beginning,
    NewEvents,
}

/// `unknown_types`: mirrors `bus_core::UnknownTypes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownTypes {
    Skip,
    DeadLetter,
}

/// The options of `#[subscriber(...)]`, one field per `SubscriberOptions` setting.
#[derive(Debug, Default)]
pub(crate) struct SubscriberArgs {
    pub(crate) group: Option<Spanned<String>>,
    pub(crate) concurrency: Option<Spanned<u64>>,
    pub(crate) max_attempts: Option<Spanned<u64>>,
    pub(crate) visibility_timeout: Option<Spanned<Millis>>,
    pub(crate) start_from: Option<Spanned<StartFrom>>,
    pub(crate) block_timeout: Option<Spanned<Millis>>,
    pub(crate) backoff_min: Option<Spanned<Millis>>,
    pub(crate) backoff_max: Option<Spanned<Millis>>,
    pub(crate) track_status: Option<Spanned<bool>>,
    pub(crate) blocking: Option<Spanned<bool>>,
    pub(crate) status_ttl: Option<Spanned<Millis>>,
    pub(crate) status_safety_ttl: Option<Spanned<Millis>>,
    pub(crate) prefetch: Option<Spanned<u64>>,
    pub(crate) handler_timeout: Option<Spanned<Millis>>,
    pub(crate) unknown_types: Option<Spanned<UnknownTypes>>,
    pub(crate) max_held: Option<Spanned<u64>>,
    pub(crate) max_entry_bytes: Option<Spanned<u64>>,
    pub(crate) max_dead_letters: Option<Spanned<u64>>,
    pub(crate) max_result_bytes: Option<Spanned<u64>>,
    /// The keys, as written, of the options that did not parse (already reported).
    pub(crate) malformed: Vec<String>,
}

/// Every accepted key, for the "unknown option" message.
const KEYS: &str = "group, concurrency, max_attempts, visibility_timeout, start_from (or start), \
    block_timeout, backoff_min, backoff_max, track_status, blocking, status_ttl, \
    status_safety_ttl, prefetch, handler_timeout (or timeout), unknown_types, max_held, \
    max_entry_bytes, max_dead_letters, max_result_bytes";

impl SubscriberArgs {
    /// Parses the attribute: the options that parsed, and an error for each one that did not.
    /// A malformed option does not stop the parse, and the values that did parse can still be
    /// checked, so one build reports every mistake.
    pub(crate) fn parse(tokens: TokenStream) -> (Self, Vec<syn::Error>) {
        let mut args = Self::default();
        let mut errors = Vec::new();
        let parsed = syn::meta::parser(|meta| {
            if let Err(e) = args.parse_option(&meta) {
                args.malformed.push(path_text(&meta));
                errors.push(e);
                skip_value(meta.input)?;
            }
            Ok(())
        })
        .parse2(tokens);
        if let Err(e) = parsed {
            errors.push(e);
        }
        (args, errors)
    }

    fn parse_option(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = match meta.path.get_ident() {
            Some(ident) => ident.to_string(),
            None => String::new(),
        };
        match key.as_str() {
            "group" => set(&mut self.group, meta, "group", string(meta)?),
            "concurrency" => set(&mut self.concurrency, meta, "concurrency", count(meta)?),
            "max_attempts" => set(&mut self.max_attempts, meta, "max_attempts", count(meta)?),
            "visibility_timeout" => set(
                &mut self.visibility_timeout,
                meta,
                "visibility_timeout",
                duration(meta)?,
            ),
            "start_from" | "start" => set(
                &mut self.start_from,
                meta,
                "start_from",
                choice(
                    meta,
                    &[
                        ("beginning", StartFrom::Beginning),
                        ("new", StartFrom::NewEvents),
                    ],
                )?,
            ),
            "block_timeout" => set(
                &mut self.block_timeout,
                meta,
                "block_timeout",
                duration(meta)?,
            ),
            "backoff_min" => set(&mut self.backoff_min, meta, "backoff_min", duration(meta)?),
            "backoff_max" => set(&mut self.backoff_max, meta, "backoff_max", duration(meta)?),
            "track_status" => set(&mut self.track_status, meta, "track_status", flag(meta)?),
            "blocking" => set(&mut self.blocking, meta, "blocking", flag(meta)?),
            "status_ttl" => set(&mut self.status_ttl, meta, "status_ttl", duration(meta)?),
            "status_safety_ttl" => set(
                &mut self.status_safety_ttl,
                meta,
                "status_safety_ttl",
                duration(meta)?,
            ),
            "prefetch" => set(&mut self.prefetch, meta, "prefetch", count(meta)?),
            "handler_timeout" | "timeout" => set(
                &mut self.handler_timeout,
                meta,
                "handler_timeout",
                duration(meta)?,
            ),
            "unknown_types" => set(
                &mut self.unknown_types,
                meta,
                "unknown_types",
                choice(
                    meta,
                    &[
                        ("skip", UnknownTypes::Skip),
                        ("dead_letter", UnknownTypes::DeadLetter),
                    ],
                )?,
            ),
            "max_held" => set(&mut self.max_held, meta, "max_held", count(meta)?),
            "max_entry_bytes" => set(
                &mut self.max_entry_bytes,
                meta,
                "max_entry_bytes",
                count(meta)?,
            ),
            "max_dead_letters" => set(
                &mut self.max_dead_letters,
                meta,
                "max_dead_letters",
                count(meta)?,
            ),
            "max_result_bytes" => set(
                &mut self.max_result_bytes,
                meta,
                "max_result_bytes",
                count(meta)?,
            ),
            _ => Err(syn::Error::new(
                meta.path.span(),
                format!(
                    "unknown option `{}`; expected one of: {KEYS}",
                    path_text(meta)
                ),
            )),
        }
    }
}

/// Stores a value, refusing a second one for the same option (`canonical` names the option when
/// the key used is an alias).
fn set<T>(
    slot: &mut Option<Spanned<T>>,
    meta: &ParseNestedMeta<'_>,
    canonical: &str,
    value: Spanned<T>,
) -> syn::Result<()> {
    if slot.is_some() {
        let key = path_text(meta);
        let message = if key == canonical {
            format!("duplicate option `{key}`")
        } else {
            format!("duplicate option `{canonical}` (`{key}` is another name for it)")
        };
        return Err(syn::Error::new(meta.path.span(), message));
    }
    *slot = Some(value);
    Ok(())
}

fn path_text(meta: &ParseNestedMeta<'_>) -> String {
    let segments: Vec<String> = meta
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    segments.join("::")
}

/// The value after `key =`, with an example in the error when the `=` is missing.
fn value<'a>(meta: &'a ParseNestedMeta<'_>, example: &str) -> syn::Result<ParseStream<'a>> {
    if !meta.input.peek(Token![=]) {
        let key = path_text(meta);
        return Err(meta.error(format!(
            "option `{key}` needs a value, e.g. `{key} = {example}`"
        )));
    }
    meta.value()
}

fn string(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<String>> {
    let lit: LitStr = value(meta, "\"billing\"")?.parse()?;
    Ok(Spanned {
        value: lit.value(),
        span: lit.span(),
    })
}

fn count(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<u64>> {
    let lit: LitInt = value(meta, "16")?.parse()?;
    let value = lit.base10_parse::<u64>().map_err(|_| {
        let problem = if lit.base10_digits().starts_with('-') {
            "cannot be negative"
        } else {
            "is too large"
        };
        syn::Error::new(lit.span(), format!("`{}` {problem}", path_text(meta)))
    })?;
    Ok(Spanned {
        value,
        span: lit.span(),
    })
}

fn duration(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<Millis>> {
    let lit: LitStr = value(meta, "\"30s\"")?.parse()?;
    let ms = parse_duration_ms(&lit.value()).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!("bad duration for `{}`: {e}", path_text(meta)),
        )
    })?;
    Ok(Spanned {
        value: ms,
        span: lit.span(),
    })
}

/// A switch (`track_status`, `blocking`): the key alone means `true`; `key = false` is accepted
/// too.
fn flag(meta: &ParseNestedMeta<'_>) -> syn::Result<Spanned<bool>> {
    if !meta.input.peek(Token![=]) {
        return Ok(Spanned {
            value: true,
            span: meta.path.span(),
        });
    }
    let lit: LitBool = meta.value()?.parse()?;
    Ok(Spanned {
        value: lit.value,
        span: lit.span(),
    })
}

/// One of a fixed set of strings.
fn choice<T: Copy>(meta: &ParseNestedMeta<'_>, choices: &[(&str, T)]) -> syn::Result<Spanned<T>> {
    let quoted: Vec<String> = choices.iter().map(|(s, _)| format!("{s:?}")).collect();
    let lit: LitStr = value(meta, &quoted[0])?.parse()?;
    let text = lit.value();
    match choices.iter().find(|(s, _)| *s == text) {
        Some((_, v)) => Ok(Spanned {
            value: *v,
            span: lit.span(),
        }),
        None => Err(syn::Error::new(
            lit.span(),
            format!("`{}` must be {}", path_text(meta), quoted.join(" or ")),
        )),
    }
}

/// Skips what is left of a malformed option (`= <expr>` or `(...)`), so the parse can go on with
/// the next one.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
    }
    if input.peek(syn::token::Paren) {
        let _content;
        syn::parenthesized!(_content in input);
    } else if !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<syn::Expr>()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_every_option() {
        let a = parse_ok(quote!(
            group = "billing",
            concurrency = 16,
            max_attempts = 5,
            visibility_timeout = "30s",
            start_from = "new",
            block_timeout = "500ms",
            backoff_min = "100ms",
            backoff_max = "1m",
            track_status,
            blocking,
            status_ttl = "1h",
            status_safety_ttl = "2d",
            prefetch = 64,
            handler_timeout = "2m",
            unknown_types = "dead_letter",
            max_held = 100,
            max_entry_bytes = 1_048_576,
            max_dead_letters = 0,
            max_result_bytes = 4096,
        ));
        let v = |o: &Option<Spanned<u64>>| o.as_ref().map(|s| s.value);
        assert_eq!(a.group.map(|g| g.value).as_deref(), Some("billing"));
        assert_eq!(v(&a.concurrency), Some(16));
        assert_eq!(v(&a.max_attempts), Some(5));
        assert_eq!(v(&a.visibility_timeout), Some(30_000));
        assert_eq!(a.start_from.map(|s| s.value), Some(StartFrom::NewEvents));
        assert_eq!(v(&a.block_timeout), Some(500));
        assert_eq!(v(&a.backoff_min), Some(100));
        assert_eq!(v(&a.backoff_max), Some(60_000));
        assert_eq!(a.track_status.map(|s| s.value), Some(true));
        assert_eq!(a.blocking.map(|s| s.value), Some(true));
        assert_eq!(v(&a.status_ttl), Some(3_600_000));
        assert_eq!(v(&a.status_safety_ttl), Some(172_800_000));
        assert_eq!(v(&a.prefetch), Some(64));
        assert_eq!(v(&a.handler_timeout), Some(120_000));
        assert_eq!(
            a.unknown_types.map(|s| s.value),
            Some(UnknownTypes::DeadLetter)
        );
        assert_eq!(v(&a.max_held), Some(100));
        assert_eq!(v(&a.max_entry_bytes), Some(1_048_576));
        assert_eq!(v(&a.max_dead_letters), Some(0));
        assert_eq!(v(&a.max_result_bytes), Some(4096));
    }

    #[test]
    fn accepts_the_short_names_and_an_explicit_flag_value() {
        let a = parse_ok(quote!(
            group = "g",
            start = "beginning",
            timeout = "5s",
            track_status = false,
            blocking = false
        ));
        assert_eq!(a.start_from.map(|s| s.value), Some(StartFrom::Beginning));
        assert_eq!(a.handler_timeout.map(|s| s.value), Some(5_000));
        assert_eq!(a.track_status.map(|s| s.value), Some(false));
        assert_eq!(a.blocking.map(|s| s.value), Some(false));
    }

    #[test]
    fn parses_the_blocking_switch() {
        let a = parse_ok(quote!(group = "g", blocking = true));
        assert_eq!(a.blocking.map(|s| s.value), Some(true));
        let a = parse_ok(quote!(group = "g"));
        assert!(a.blocking.is_none());
        assert!(a.track_status.is_none());
    }

    fn parse_ok(tokens: TokenStream) -> SubscriberArgs {
        let (args, errors) = SubscriberArgs::parse(tokens);
        assert!(errors.is_empty(), "{errors:?}");
        args
    }

    fn error(tokens: TokenStream) -> String {
        let (_, errors) = SubscriberArgs::parse(tokens);
        assert!(!errors.is_empty(), "should fail");
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn rejects_unknown_duplicate_and_mistyped_options() {
        let e = error(quote!(group = "a", colour = "red"));
        assert!(e.contains("unknown option `colour`"), "{e}");
        let e = error(quote!(group = "a", group = "b"));
        assert!(e.contains("duplicate option `group`"), "{e}");
        let e = error(quote!(group = "a", timeout = "1s", handler_timeout = "2s"));
        assert!(e.contains("duplicate option `handler_timeout`"), "{e}");
        let e = error(quote!(group = 5));
        assert!(e.contains("expected string literal"), "{e}");
        let e = error(quote!(group = "a", concurrency));
        assert!(e.contains("e.g. `concurrency = 16`"), "{e}");
        let e = error(quote!(group = "a", unknown_types = "drop"));
        assert!(e.contains("\"skip\" or \"dead_letter\""), "{e}");
        let e = error(quote!(group = "a", track_status = "yes"));
        assert!(e.contains("expected boolean literal"), "{e}");
        let e = error(quote!(group = "a", blocking = 1));
        assert!(e.contains("expected boolean literal"), "{e}");
        let e = error(quote!(group = "a", blocking, blocking = false));
        assert!(e.contains("duplicate option `blocking`"), "{e}");
        let e = error(quote!(group = "a", prefetch = -1));
        assert!(e.contains("`prefetch` cannot be negative"), "{e}");
        let e = error(quote!(group = "a", max_dead_letters = 18446744073709551616));
        assert!(e.contains("`max_dead_letters` is too large"), "{e}");
    }

    #[test]
    fn reports_every_malformed_option_at_once_and_keeps_the_others() {
        let tokens = quote!(
            group = "a",
            colour = "red",
            concurrency = "many",
            visibility_timeout = "soon",
            flavour(x = 1),
            max_held = 10
        );
        let (args, _) = SubscriberArgs::parse(tokens.clone());
        assert_eq!(args.max_held.map(|v| v.value), Some(10));
        let e = error(tokens);
        for want in [
            "unknown option `colour`",
            "expected integer literal",
            "bad duration for `visibility_timeout`",
            "unknown option `flavour`",
        ] {
            assert!(e.contains(want), "{want} missing in {e}");
        }
    }
}
