//! Trace context propagation through event headers, with the `opentelemetry` feature.
//!
//! On publish, the OpenTelemetry context of the current `tracing` span (the `publish` span, or the
//! caller's span when that one is filtered out) is written into the event's headers by the global
//! text-map propagator — with `TraceContextPropagator` that is W3C `traceparent`/`tracestate`.
//! Headers the caller set explicitly win. On the consuming side the `handle` span takes the
//! extracted context as its parent, so the handler continues the publisher's trace, across
//! processes, retries, reclaims and dead-letter replays (the headers travel with the entry).
//!
//! Nothing is written while no propagator is installed (OpenTelemetry's global default is a no-op)
//! or the current span has no valid context. Set one up once at start-up:
//!
//! ```text
//! opentelemetry::global::set_text_map_propagator(
//!     opentelemetry_sdk::propagation::TraceContextPropagator::new(),
//! );
//! ```
//! and install `tracing_opentelemetry::layer()` in your `tracing` subscriber.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Collects injected headers that the caller did not set already.
struct Inject<'a> {
    existing: &'a [(String, String)],
    out: Vec<(String, String)>,
}

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        let set_by_caller = self
            .existing
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(key));
        if !set_by_caller && crate::names::validate_name("header", key).is_ok() {
            self.out.push((key.to_owned(), value));
        }
    }
}

/// The trace headers for an event published now (from the current span), minus any the caller
/// already set. Empty when there is nothing to propagate.
pub(crate) fn inject(existing: &[(String, String)]) -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut inject = Inject {
        existing,
        out: Vec::new(),
    };
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut inject));
    inject.out
}

struct Extract<'a>(&'a [(String, String)]);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Makes `span` continue the trace carried in `headers`, if they carry a valid one.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &[(String, String)]) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
    if cx.span().span_context().is_valid() {
        if let Err(e) = span.set_parent(cx) {
            tracing::debug!(error = %e, "cannot continue the publisher's trace");
        }
    }
}
