//! What the macros emit when the input is invalid: the errors, plus stand-ins for the items a
//! valid input would have produced.
//!
//! Without the stand-ins, every use of the type or handler elsewhere (`bus.publish(&order)`,
//! `worker.subscribe(charge::subscriber())`) adds its own "trait not implemented" error, burying
//! the one that matters. The stand-in impls never run (the build fails anyway), and their
//! `where` clauses hold exactly when a valid expansion would compile, so they add no errors of
//! their own. The bounds are higher-ranked over an unused lifetime because a bound without
//! generic parameters that does not hold is itself an error (trivial bounds are unstable), while
//! a higher-ranked one is just an unmet bound. This is the pattern of thiserror's `fallback.rs`.

use proc_macro2::{TokenStream, TokenTree};
use quote::{quote, ToTokens as _};
use syn::{parse_quote, DeriveInput, ItemFn, Type};

use crate::expand::companion;
use crate::paths::private;
use crate::signature::Handler;

/// `#[derive(Event)]` on error: the error and an `impl Event` with placeholder constants.
pub(crate) fn event(input: &DeriveInput, error: syn::Error) -> TokenStream {
    let p = private();
    let ident = &input.ident;
    let error = error.to_compile_error();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut where_clause = where_clause.cloned().unwrap_or_else(|| parse_quote!(where));
    // The supertraits of `Event`.
    where_clause.predicates.push(parse_quote! {
        for<'workaround> #ident #ty_generics: #p::Serialize
            + #p::DeserializeOwned
            + ::core::marker::Send
            + ::core::marker::Sync
            + 'static
    });
    quote! {
        #error

        #[automatically_derived]
        impl #impl_generics #p::Event for #ident #ty_generics #where_clause {
            const STREAM: &'static ::core::primitive::str = "";
            const NAME: &'static ::core::primitive::str = "";
        }
    }
}

/// `#[subscriber]` on error: the error, the function as written, the companion struct, and (when
/// the event type is known) an `impl Subscriber` whose methods are never called.
pub(crate) fn subscriber(f: &ItemFn, handler: Option<&Handler>, error: syn::Error) -> TokenStream {
    let p = private();
    let name = &f.sig.ident;
    let error = error.to_compile_error();
    // A method is inside an impl block, where the companion items cannot go.
    if f.sig.receiver().is_some() {
        return quote!(#error #f);
    }
    let companion = companion(f, None);
    // The event type may name the handler's own type parameters, undeclared outside it.
    let generic = f.sig.generics.type_params().next().is_some()
        || f.sig.generics.const_params().next().is_some();
    let subscriber_impl = handler
        .map(|h| &h.event_ty)
        .filter(|ty| !generic && fits_a_where_clause(ty))
        .map(|event_ty| {
            quote! {
                impl #p::Subscriber for #name
                where
                    for<'workaround> #event_ty: #p::Event,
                {
                    type Event = #event_ty;

                    fn options(&self) -> #p::SubscriberOptions {
                        ::core::unreachable!()
                    }

                    fn handle(
                        &self,
                        _: #event_ty,
                        _: #p::Context,
                    ) -> #p::BoxFuture<'_, #p::HandlerResult> {
                        ::core::unreachable!()
                    }
                }
            }
        });
    quote! {
        #error
        #f
        #companion
        #subscriber_impl
    }
}

/// Whether a type can be written in a `where` clause as is: no lifetimes or references (elided
/// ones are not allowed there, named ones would be undeclared), no `impl Trait`, no `_`. Any of
/// them would make the stand-in impl an error of its own; an event type with them is invalid
/// anyway (events are `'static` and named), and reported as such.
fn fits_a_where_clause(ty: &Type) -> bool {
    fn plain(tokens: TokenStream) -> bool {
        tokens.into_iter().all(|token| match token {
            TokenTree::Punct(p) => !matches!(p.as_char(), '\'' | '&'),
            TokenTree::Ident(i) => i != "impl" && i != "_",
            TokenTree::Group(g) => plain(g.stream()),
            TokenTree::Literal(_) => true,
        })
    }
    plain(ty.to_token_stream())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_types_go_into_where_clauses() {
        let plain: [Type; 3] = [
            parse_quote!(Order),
            parse_quote!(orders::Placed),
            parse_quote!(Envelope<Order, [u8; 4]>),
        ];
        for ty in plain {
            assert!(fits_a_where_clause(&ty), "{}", ty.to_token_stream());
        }
        let not_plain: [Type; 4] = [
            parse_quote!(&Order),
            parse_quote!(Order<'_>),
            parse_quote!(Vec<_>),
            parse_quote!(Box<dyn Fn(&str)>),
        ];
        for ty in not_plain {
            assert!(!fits_a_where_clause(&ty), "{}", ty.to_token_stream());
        }
    }
}
