//! The one route from generated code into `bus_core`.
//!
//! Generated code names `bus_core` items only as `::bus_core::__private::…` (a hidden module that
//! re-exports exactly what the macros need, so `bus_core`'s public API and its dependencies can
//! change without breaking expansions), and standard items only by absolute `::core::…` paths,
//! so that nothing the user imports or declares (a `Box`, `Send` or `str` of their own) can
//! capture a generated name. Local variables and parameters of generated code come from
//! [`local`].

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned};

/// `::bus_core::__private`.
pub(crate) fn private() -> TokenStream {
    quote!(::bus_core::__private)
}

/// `::bus_core::__private`, located at `span`: for expressions whose errors should point there.
pub(crate) fn private_at(span: Span) -> TokenStream {
    quote_spanned!(span=> ::bus_core::__private)
}

/// An identifier for a local variable or parameter of generated code.
///
/// Mixed-site hygiene keeps it apart from the user's local variables, but a binding is still
/// looked up among the items in scope: with a user's `const ctx` in scope, `let ctx = ...` would
/// be a constant pattern, not a new variable. Hence the `__bus_` prefix as well.
pub(crate) fn local(name: &str) -> Ident {
    Ident::new(&format!("__bus_{name}"), Span::mixed_site())
}
