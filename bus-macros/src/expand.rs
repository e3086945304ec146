//! Code generation for `#[subscriber]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::ItemFn;

use crate::args::SubscriberArgs;
use crate::errors::combine;
use crate::fallback;
use crate::options;
use crate::paths::{local, private, private_at};
use crate::signature::{self, Handler};

/// Entry point. On any error the function is still emitted as written (with a stand-in for the
/// generated items, see `fallback.rs`), so the rest of the crate type-checks and only the real
/// errors are reported.
pub(crate) fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    let out = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => expand(args, &f),
        Err(e) => {
            let error = e.to_compile_error();
            quote!(#error #item)
        }
    };
    if std::env::var_os("BUS_MACROS_DEBUG").is_some() {
        eprintln!("{out}");
    }
    out
}

fn expand(args: TokenStream, f: &ItemFn) -> TokenStream {
    // An attribute macro's call site is the attribute itself: the place to blame for a missing
    // option.
    let attr_span = Span::call_site();
    let (args, mut errors) = SubscriberArgs::parse(args);
    let (group, option_errors) = options::check(&args, attr_span);
    errors.extend(option_errors);
    let (handler, signature_errors) = signature::check(f);
    errors.extend(signature_errors);
    match (combine(errors), handler) {
        (Ok(()), Some(handler)) => generate(f, &args, &group, &handler),
        (result, handler) => {
            let error = result.err().unwrap_or_else(|| {
                syn::Error::new(attr_span, "#[subscriber] could not read this handler")
            });
            fallback::subscriber(f, handler.as_ref(), error)
        }
    }
}

fn generate(f: &ItemFn, args: &SubscriberArgs, group: &str, handler: &Handler) -> TokenStream {
    let p = private();
    let name = &f.sig.ident;
    let event_ty = &handler.event_ty;
    let (event, ctx, keep, output) = (local("event"), local("ctx"), local("keep"), local("output"));
    let options_body = options::options_body(args, group);
    let handler_future = send_checked_future(f, handler);
    // The conversion is spanned at the return type, so a type that is not a handler result is
    // reported with a label there.
    let result_span = match &f.sig.output {
        syn::ReturnType::Default => name.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    let into_result = {
        let p = private_at(result_span);
        quote_spanned! {result_span=>
            #p::IntoHandlerResult::into_handler_result(#output, #keep)
        }
    };
    let companion = companion(f, Some(group));
    quote! {
        #f

        #companion

        impl #p::Subscriber for #name {
            type Event = #event_ty;

            fn options(&self) -> #p::SubscriberOptions {
                #options_body
            }

            fn handle(
                &self,
                #event: #event_ty,
                #ctx: #p::Context,
            ) -> #p::BoxFuture<'_, #p::HandlerResult> {
                #p::Box::pin(async move {
                    let #keep = #p::Context::keeps_result(&#ctx);
                    let #output = #handler_future.await;
                    #into_result
                })
            }
        }
    }
}

/// The handler's future, boxed by a generated helper that requires `Send`.
///
/// `handle` must return a `Send` future. Left to the final coercion into `BoxFuture`, a handler
/// holding something like an `Rc` across an `.await` is reported at the attribute, with a
/// mention of the generated async block. Requiring `Send` here instead, on the handler's own
/// future and spanned at the handler's name, points the error at the handler (with rustc's note
/// naming the value held across the `.await`). Since the helper returns a `BoxFuture`, which is
/// `Send`, the enclosing block is `Send` regardless, so the error is reported once, not twice.
fn send_checked_future(f: &ItemFn, handler: &Handler) -> TokenStream {
    let p = private();
    let name = &f.sig.ident;
    let (event, ctx) = (local("event"), local("ctx"));
    // Spanned at the context parameter's type, so a wrong type is reported there.
    let ctx_arg = handler
        .ctx_ty
        .as_ref()
        .map(|ty| quote_spanned!(ty.span()=> , &#ctx));
    let future = local("future");
    quote_spanned! {name.span()=>
        {
            fn handler_future_must_be_send<'a, F>(#future: F) -> #p::BoxFuture<'a, F::Output>
            where
                F: ::core::future::Future + ::core::marker::Send + 'a,
            {
                #p::Box::pin(#future)
            }
            handler_future_must_be_send(#name(#event #ctx_arg))
        }
    }
}

/// The braced struct named like the handler (braced structs live only in the type namespace, so
/// it does not clash with the function) and its `subscriber()` constructor.
pub(crate) fn companion(f: &ItemFn, group: Option<&str>) -> TokenStream {
    let vis = &f.vis;
    let name = &f.sig.ident;
    let group = group.map(|g| format!(": group `{g}`")).unwrap_or_default();
    let doc = format!(
        "Subscriber generated by `#[subscriber]` for [`{name}()`]{group}. Register it with \
         `worker.subscribe({name}::subscriber())`."
    );
    quote! {
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #name {}

        impl #name {
            /// The subscriber to register with a worker.
            #[allow(dead_code)]
            #vis fn subscriber() -> Self {
                #name {}
            }
        }
    }
}
