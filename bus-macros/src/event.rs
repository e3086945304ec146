//! `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{DeriveInput, LitStr};

use crate::validate::name_error;

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(t) => t,
        Err(e) => e.to_compile_error(),
    }
}

fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(Event)] does not support generic types",
        ));
    }
    let mut stream: Option<LitStr> = None;
    let mut name: Option<LitStr> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            let slot = if meta.path.is_ident("stream") {
                &mut stream
            } else if meta.path.is_ident("name") {
                &mut name
            } else {
                return Err(meta.error("unknown option; expected `stream` or `name`"));
            };
            if slot.is_some() {
                return Err(meta.error("duplicate option"));
            }
            *slot = Some(meta.value()?.parse()?);
            Ok(())
        })?;
    }
    let ident = &input.ident;
    let stream = stream.ok_or_else(|| {
        syn::Error::new(
            ident.span(),
            "missing #[event(stream = \"...\")] naming the stream this event is published to",
        )
    })?;
    if let Some(reason) = name_error(&stream.value()) {
        return Err(syn::Error::new(
            stream.span(),
            format!("invalid stream name: {reason}"),
        ));
    }
    let name = name.map(|n| n.value()).unwrap_or_else(|| ident.to_string());
    Ok(quote! {
        impl ::bus_core::__private::Event for #ident {
            const STREAM: &'static str = #stream;
            const NAME: &'static str = #name;
        }
    })
}
