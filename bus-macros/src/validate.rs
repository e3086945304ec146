//! Spanned checks of the handler function and the option values.

use proc_macro2::Span;
use syn::spanned::Spanned as _;
use syn::{FnArg, ItemFn, Type};

use crate::args::SubscriberArgs;

/// Longest accepted name, as in `bus_core::MAX_NAME_LEN`.
const MAX_NAME_LEN: usize = 128;

/// The checked facts the expansion needs.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) group: String,
    pub(crate) event_ty: Type,
    pub(crate) takes_ctx: bool,
}

/// The name rules of `bus_core::validate_name`, checked at compile time.
pub(crate) fn name_error(name: &str) -> Option<&'static str> {
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

/// Checks the options and the function; collects every error found.
pub(crate) fn check(args: &SubscriberArgs, f: &ItemFn, attr_span: Span) -> syn::Result<Checked> {
    let mut errors: Vec<syn::Error> = Vec::new();
    let group = match &args.group {
        Some(g) => {
            if let Some(reason) = name_error(&g.value) {
                errors.push(syn::Error::new(
                    g.span,
                    format!("invalid group name: {reason}"),
                ));
            }
            g.value.clone()
        }
        None => {
            errors.push(syn::Error::new(
                attr_span,
                "missing required option `group`, e.g. #[subscriber(group = \"billing\")]",
            ));
            String::new()
        }
    };
    if let Some(c) = &args.concurrency {
        if c.value == 0 {
            errors.push(syn::Error::new(c.span, "concurrency must be at least 1"));
        }
    }
    if let Some(m) = &args.max_attempts {
        if m.value == 0 || m.value > u64::from(u32::MAX) {
            errors.push(syn::Error::new(
                m.span,
                "max_attempts must be between 1 and 4294967295",
            ));
        }
    }
    if let Some(v) = &args.visibility_timeout_ms {
        if v.value < 100 {
            errors.push(syn::Error::new(
                v.span,
                "visibility_timeout must be at least 100ms",
            ));
        }
    }
    if let Some(b) = &args.block_timeout_ms {
        if b.value == 0 {
            errors.push(syn::Error::new(b.span, "block_timeout must be positive"));
        }
    }
    if let Some(t) = &args.timeout_ms {
        if t.value == 0 {
            errors.push(syn::Error::new(t.span, "timeout must be positive"));
        }
    }

    if let (Some(lo), Some(hi)) = (&args.backoff_min_ms, &args.backoff_max_ms) {
        if lo.value > hi.value {
            errors.push(syn::Error::new(
                hi.span,
                "backoff_max must not be below backoff_min",
            ));
        }
    }

    let sig = &f.sig;
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "a #[subscriber] handler must be an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "a #[subscriber] handler cannot be generic",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new(
            v.span(),
            "a #[subscriber] handler cannot be variadic",
        ));
    }
    let mut event_ty = None;
    let mut takes_ctx = false;
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => errors.push(syn::Error::new(
                r.span(),
                "a #[subscriber] handler cannot take `self`; use a free function",
            )),
            FnArg::Typed(pt) => match i {
                0 => {
                    if let Type::Reference(r) = &*pt.ty {
                        errors.push(syn::Error::new(
                            r.and_token.span,
                            "the event must be taken by value, e.g. `event: OrderPlaced`",
                        ));
                    }
                    event_ty = Some((*pt.ty).clone());
                }
                1 => takes_ctx = true,
                _ => errors.push(syn::Error::new(
                    pt.span(),
                    "a #[subscriber] handler takes the event and optionally `&Context`, nothing more",
                )),
            },
        }
    }
    if sig.inputs.is_empty() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a #[subscriber] handler needs the event as its first argument, e.g. `event: OrderPlaced`",
        ));
    }
    let mut errors = errors.into_iter();
    if let Some(mut first) = errors.next() {
        for e in errors {
            first.combine(e);
        }
        return Err(first);
    }
    Ok(Checked {
        group,
        event_ty: event_ty.ok_or_else(|| syn::Error::new(attr_span, "missing event argument"))?,
        takes_ctx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    fn run(args: proc_macro2::TokenStream, f: ItemFn) -> syn::Result<Checked> {
        let a = SubscriberArgs::parse(args)?;
        check(&a, &f, Span::call_site())
    }

    #[test]
    fn accepts_a_good_handler() {
        let c = run(
            quote!(group = "billing"),
            parse_quote!(
                async fn h(e: Order, ctx: &Context) -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .expect("ok");
        assert_eq!(c.group, "billing");
        assert!(c.takes_ctx);
        let c = run(
            quote!(group = "g"),
            parse_quote!(
                async fn h(e: Order) {}
            ),
        )
        .expect("ok");
        assert!(!c.takes_ctx);
    }

    #[test]
    fn rejects_misuse() {
        let cases: Vec<(proc_macro2::TokenStream, ItemFn, &str)> = vec![
            (
                quote!(group = "g"),
                parse_quote!(
                    fn h(e: Order) {}
                ),
                "must be an `async fn`",
            ),
            (
                quote!(group = "g"),
                parse_quote!(
                    async fn h() {}
                ),
                "needs the event",
            ),
            (
                quote!(group = "g"),
                parse_quote!(
                    async fn h(e: &Order) {}
                ),
                "taken by value",
            ),
            (
                quote!(group = "g"),
                parse_quote!(
                    async fn h<T>(e: T) {}
                ),
                "cannot be generic",
            ),
            (
                quote!(group = "g"),
                parse_quote!(
                    async fn h(&self, e: Order) {}
                ),
                "cannot take `self`",
            ),
            (
                quote!(group = "g"),
                parse_quote!(
                    async fn h(a: A, b: &B, c: C) {}
                ),
                "nothing more",
            ),
            (
                quote!(),
                parse_quote!(
                    async fn h(e: Order) {}
                ),
                "missing required option `group`",
            ),
            (
                quote!(group = "a b"),
                parse_quote!(
                    async fn h(e: Order) {}
                ),
                "invalid group name",
            ),
            (
                quote!(group = "g", concurrency = 0),
                parse_quote!(
                    async fn h(e: Order) {}
                ),
                "at least 1",
            ),
            (
                quote!(group = "g", max_attempts = 0),
                parse_quote!(
                    async fn h(e: Order) {}
                ),
                "max_attempts",
            ),
        ];
        for (args, f, want) in cases {
            let err = run(args, f).expect_err(want).to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
