//! Parsing of `#[subscriber(...)]` arguments.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{Ident, LitInt, LitStr};

/// A parsed option value with the span of its literal, for diagnostics.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// The arguments of `#[subscriber(...)]`.
#[derive(Debug, Default)]
pub(crate) struct SubscriberArgs {
    pub(crate) group: Option<Spanned<String>>,
    pub(crate) concurrency: Option<Spanned<u64>>,
    pub(crate) max_attempts: Option<Spanned<u64>>,
    pub(crate) visibility_timeout_ms: Option<Spanned<u64>>,
    pub(crate) block_timeout_ms: Option<Spanned<u64>>,
    pub(crate) start_new: Option<Spanned<bool>>,
    pub(crate) backoff_min_ms: Option<Spanned<u64>>,
    pub(crate) backoff_max_ms: Option<Spanned<u64>>,
    pub(crate) timeout_ms: Option<Spanned<u64>>,
}

const KNOWN: &str = "group, concurrency, max_attempts, visibility_timeout, block_timeout, backoff_min, backoff_max, timeout, start";

fn set<T>(slot: &mut Option<Spanned<T>>, key: &Ident, value: T, span: Span) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            key.span(),
            format!("duplicate option `{key}`"),
        ));
    }
    *slot = Some(Spanned { value, span });
    Ok(())
}

fn int(lit: &LitInt) -> syn::Result<u64> {
    lit.base10_parse::<u64>()
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"` into milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number in {s:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number too large in {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(format!("missing unit in {s:?} (use ms, s, m or h)")),
            u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration too large: {s:?}"))?;
    }
    Ok(total)
}

fn duration(lit: &LitStr) -> syn::Result<u64> {
    parse_duration_ms(&lit.value())
        .map_err(|e| syn::Error::new(lit.span(), format!("bad duration: {e}")))
}

impl SubscriberArgs {
    /// Parses the attribute's token stream.
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut args = SubscriberArgs::default();
        let parser = syn::meta::parser(|meta| {
            let Some(key) = meta.path.get_ident().cloned() else {
                return Err(meta.error(format!("unknown option; expected one of: {KNOWN}")));
            };
            match key.to_string().as_str() {
                "group" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    set(&mut args.group, &key, lit.value(), lit.span())
                }
                "concurrency" => {
                    let lit: LitInt = meta.value()?.parse()?;
                    set(&mut args.concurrency, &key, int(&lit)?, lit.span())
                }
                "max_attempts" => {
                    let lit: LitInt = meta.value()?.parse()?;
                    set(&mut args.max_attempts, &key, int(&lit)?, lit.span())
                }
                "visibility_timeout" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    set(
                        &mut args.visibility_timeout_ms,
                        &key,
                        duration(&lit)?,
                        lit.span(),
                    )
                }
                "block_timeout" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    set(
                        &mut args.block_timeout_ms,
                        &key,
                        duration(&lit)?,
                        lit.span(),
                    )
                }
                "backoff_min" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    set(&mut args.backoff_min_ms, &key, duration(&lit)?, lit.span())
                }
                "backoff_max" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    set(&mut args.backoff_max_ms, &key, duration(&lit)?, lit.span())
                }
                "timeout" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    set(&mut args.timeout_ms, &key, duration(&lit)?, lit.span())
                }
                "start" => {
                    let lit: LitStr = meta.value()?.parse()?;
                    let new = match lit.value().as_str() {
                        "beginning" => false,
                        "new" => true,
                        _ => {
                            return Err(syn::Error::new(
                                lit.span(),
                                "start must be \"beginning\" or \"new\"",
                            ))
                        }
                    };
                    set(&mut args.start_new, &key, new, lit.span())
                }
                _ => Err(syn::Error::new(
                    key.span(),
                    format!("unknown option `{key}`; expected one of: {KNOWN}"),
                )),
            }
        });
        parser.parse2(tokens)?;
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_all_options() {
        let a = SubscriberArgs::parse(quote!(
            group = "billing",
            concurrency = 16,
            max_attempts = 5,
            visibility_timeout = "30s",
            block_timeout = "500ms",
            timeout = "2m",
            start = "new"
        ))
        .expect("parse");
        assert_eq!(a.timeout_ms.as_ref().map(|v| v.value), Some(120_000));
        assert_eq!(a.group.map(|g| g.value).as_deref(), Some("billing"));
        assert_eq!(a.concurrency.map(|v| v.value), Some(16));
        assert_eq!(a.max_attempts.map(|v| v.value), Some(5));
        assert_eq!(a.visibility_timeout_ms.map(|v| v.value), Some(30_000));
        assert_eq!(a.block_timeout_ms.map(|v| v.value), Some(500));
        assert_eq!(a.start_new.map(|v| v.value), Some(true));
    }

    #[test]
    fn rejects_unknown_and_duplicate_options() {
        let e =
            SubscriberArgs::parse(quote!(group = "a", colour = "red")).expect_err("should fail");
        assert!(e.to_string().contains("unknown option `colour`"), "{e}");
        let e = SubscriberArgs::parse(quote!(group = "a", group = "b")).expect_err("should fail");
        assert!(e.to_string().contains("duplicate option `group`"), "{e}");
        let e = SubscriberArgs::parse(quote!(group = 5)).expect_err("should fail");
        assert!(e.to_string().contains("expected string literal"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert!(parse_duration_ms("30").is_err());
        assert!(parse_duration_ms("thirty seconds").is_err());
        assert!(parse_duration_ms("5d").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("99999999999999999999s").is_err());
    }
}
