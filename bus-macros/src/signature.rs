//! Checks of the function `#[subscriber]` is put on: an `async fn` taking the event by value and,
//! optionally, `&Context`.

use syn::spanned::Spanned as _;
use syn::{FnArg, GenericParam, ItemFn, PatType, Type};

/// What the expansion needs to know about a handler.
#[derive(Debug)]
pub(crate) struct Handler {
    /// The event argument's type, as written.
    pub(crate) event_ty: Type,
    /// The context argument's type, as written, if the handler takes one.
    pub(crate) ctx_ty: Option<Type>,
}

/// Checks the handler; returns what is known of it (the event type, unless there is no usable
/// event argument) and every error found.
pub(crate) fn check(f: &ItemFn) -> (Option<Handler>, Vec<syn::Error>) {
    let mut errors = Vec::new();
    let mut fail = |span: proc_macro2::Span, message: &str| {
        errors.push(syn::Error::new(span, message));
    };
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        fail(
            sig.fn_token.span,
            "a #[subscriber] handler must be an `async fn`",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        fail(unsafety.span, "a #[subscriber] handler cannot be `unsafe`");
    }
    // Lifetime parameters are fine (the call infers them); a type or const parameter would leave
    // the event type or the handler to call undecided.
    for param in &sig.generics.params {
        if !matches!(param, GenericParam::Lifetime(_)) {
            fail(
                param.span(),
                "a #[subscriber] handler cannot be generic: it handles one concrete event type",
            );
        }
    }
    if let Some(v) = &sig.variadic {
        fail(v.span(), "a #[subscriber] handler cannot be variadic");
    }
    let mut event = None;
    let mut ctx = None;
    let mut typed = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => fail(
                r.span(),
                "a #[subscriber] handler cannot take `self`; write a free function",
            ),
            FnArg::Typed(arg) => typed.push(arg),
        }
    }
    for (i, arg) in typed.into_iter().enumerate() {
        match i {
            0 => event = check_event(arg, &mut fail),
            1 => ctx = check_context(arg, &mut fail),
            _ => fail(
                arg.span(),
                "too many arguments: a #[subscriber] handler takes the event and, optionally, \
                 `&Context`",
            ),
        }
    }
    if sig.inputs.is_empty() {
        fail(
            sig.paren_token.span.join(),
            "a #[subscriber] handler needs the event as its first argument, e.g. \
             `event: OrderPlaced`",
        );
    }
    let handler = event.map(|event_ty| Handler {
        event_ty,
        ctx_ty: ctx,
    });
    (handler, errors)
}

fn check_event(arg: &PatType, fail: &mut impl FnMut(proc_macro2::Span, &str)) -> Option<Type> {
    match &*arg.ty {
        Type::Reference(r) => {
            fail(
                r.and_token.span,
                "the event must be taken by value, e.g. `event: OrderPlaced`",
            );
            None
        }
        Type::ImplTrait(t) => {
            fail(
                t.span(),
                "a #[subscriber] handler cannot be generic: name the event type, e.g. \
                 `event: OrderPlaced`",
            );
            None
        }
        ty => Some(ty.clone()),
    }
}

fn check_context(arg: &PatType, fail: &mut impl FnMut(proc_macro2::Span, &str)) -> Option<Type> {
    if matches!(&*arg.ty, Type::Reference(r) if r.mutability.is_none()) {
        Some((*arg.ty).clone())
    } else {
        fail(
            arg.ty.span(),
            "the second argument must be the context, taken by shared reference: `ctx: &Context`",
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn errors(f: ItemFn) -> String {
        check(&f)
            .1
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn accepts_good_handlers() {
        let (h, e) = check(&parse_quote!(
            async fn h(e: Order, ctx: &Context) -> Result<(), E> {
                Ok(())
            }
        ));
        assert!(e.is_empty());
        assert!(h.is_some_and(|h| h.ctx_ty.is_some()));
        let (h, e) = check(&parse_quote!(
            async fn h(e: Order) {}
        ));
        assert!(e.is_empty());
        assert!(h.is_some_and(|h| h.ctx_ty.is_none()));
        let (_, e) = check(&parse_quote!(
            async fn h<'a>(e: Order, ctx: &'a Context) {}
        ));
        assert!(e.is_empty(), "lifetime parameters are fine");
    }

    #[test]
    fn rejects_misuse() {
        let cases: Vec<(ItemFn, &str)> = vec![
            (
                parse_quote!(
                    fn h(e: Order) {}
                ),
                "must be an `async fn`",
            ),
            (
                parse_quote!(
                    async unsafe fn h(e: Order) {}
                ),
                "cannot be `unsafe`",
            ),
            (
                parse_quote!(
                    async fn h() {}
                ),
                "needs the event",
            ),
            (
                parse_quote!(
                    async fn h(e: &Order) {}
                ),
                "taken by value",
            ),
            (
                parse_quote!(
                    async fn h<T>(e: T) {}
                ),
                "cannot be generic",
            ),
            (
                parse_quote!(
                    async fn h<const N: usize>(e: Order) {}
                ),
                "cannot be generic",
            ),
            (
                parse_quote!(
                    async fn h(e: impl Event) {}
                ),
                "cannot be generic",
            ),
            (
                parse_quote!(
                    async fn h(&self, e: Order) {}
                ),
                "cannot take `self`",
            ),
            (
                parse_quote!(
                    async fn h(e: Order, ctx: Context) {}
                ),
                "by shared reference",
            ),
            (
                parse_quote!(
                    async fn h(e: Order, ctx: &mut Context) {}
                ),
                "by shared reference",
            ),
            (
                parse_quote!(
                    async fn h(a: A, b: &B, c: C) {}
                ),
                "too many arguments",
            ),
        ];
        for (f, want) in cases {
            let e = errors(f);
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
