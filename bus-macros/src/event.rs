//! `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{DeriveInput, LitStr};

use crate::errors::combine;
use crate::fallback;
use crate::paths::private;

/// Entry point. On invalid attributes it emits the errors and a stand-in impl (see
/// `fallback.rs`), so uses of the type elsewhere add no errors of their own.
pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    match check(&input) {
        Ok(attrs) => generate(&input, &attrs),
        Err(e) => fallback::event(&input, e),
    }
}

/// The checked `#[event(...)]` values.
#[derive(Debug)]
struct EventAttrs {
    stream: LitStr,
    name: String,
}

fn check(input: &DeriveInput) -> syn::Result<EventAttrs> {
    let mut errors = Vec::new();
    if !input.generics.params.is_empty() {
        errors.push(syn::Error::new(
            input.generics.span(),
            "#[derive(Event)] does not support generic parameters; implement `Event` by hand \
             for each concrete type instead",
        ));
    }
    let mut stream: Option<LitStr> = None;
    let mut name: Option<LitStr> = None;
    let mut attrs_readable = true;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        let parsed = attr.parse_nested_meta(|meta| {
            let (slot, key) = if meta.path.is_ident("stream") {
                (&mut stream, "stream")
            } else if meta.path.is_ident("name") {
                (&mut name, "name")
            } else {
                return Err(meta.error("unknown option; expected `stream` or `name`"));
            };
            if slot.is_some() {
                return Err(meta.error(format!("duplicate option `{key}`")));
            }
            *slot = Some(meta.value()?.parse()?);
            Ok(())
        });
        if let Err(e) = parsed {
            attrs_readable = false;
            errors.push(e);
        }
    }
    if let Some(s) = &stream {
        if let Some(reason) = bus_names::name_error(&s.value()) {
            errors.push(syn::Error::new(
                s.span(),
                format!("invalid stream name: {reason}"),
            ));
        }
    }
    let missing_stream = || {
        syn::Error::new(
            input.ident.span(),
            "missing #[event(stream = \"...\")] naming the stream this event is published to",
        )
    };
    // A malformed #[event] attribute was reported above; a missing stream there is no news.
    if stream.is_none() && attrs_readable {
        errors.push(missing_stream());
    }
    combine(errors)?;
    Ok(EventAttrs {
        stream: stream.ok_or_else(missing_stream)?,
        name: name.map_or_else(|| input.ident.to_string(), |n| n.value()),
    })
}

fn generate(input: &DeriveInput, attrs: &EventAttrs) -> TokenStream {
    let p = private();
    let ident = &input.ident;
    let EventAttrs { stream, name } = attrs;
    quote! {
        #[automatically_derived]
        impl #p::Event for #ident {
            const STREAM: &'static ::core::primitive::str = #stream;
            const NAME: &'static ::core::primitive::str = #name;
        }
    }
}
