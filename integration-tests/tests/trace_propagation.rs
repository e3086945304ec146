//! Trace propagation with the `opentelemetry` feature: the publisher's trace context travels in the event's
//! headers (W3C `traceparent`) and the handler's `handle` span continues it.

use integration_tests::fixtures::Order;
use std::time::Duration;

use bus_core::{Context, PublishOptions, SubscriberOptions};
use integration_tests::{eventually, TestEnv};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// What a handler saw: the event, its span's trace id, the traceparent header it got.
type Seen = (u64, TraceId, Option<String>);

const T: Duration = Duration::from_secs(20);
const FIXED_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_continues_the_publishers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("streambus-test")));
    tracing::subscriber::set_global_default(subscriber).expect("global subscriber");

    let env = TestEnv::new("otel").await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let w = env
        .bus
        .worker()
        .subscribe(bus_core::subscriber_fn(
            SubscriberOptions::new("billing"),
            move |o: Order, ctx: Context| {
                let tx = tx.clone();
                async move {
                    let trace = tracing::Span::current()
                        .context()
                        .span()
                        .span_context()
                        .trace_id();
                    let header = ctx.header("traceparent").map(str::to_owned);
                    let _ = tx.send((o.n, trace, header));
                    Ok::<(), bus_core::HandlerError>(())
                }
            },
        ))
        .start()
        .await
        .expect("start");

    // 1: published inside the caller's request span.
    let request = tracing::info_span!("request");
    let request_trace = request.context().span().span_context().trace_id();
    assert_ne!(request_trace, TraceId::INVALID);
    env.bus
        .publish(&Order { n: 1 })
        .instrument(request)
        .await
        .expect("publish");
    // 2: a traceparent set by the caller wins over the current span.
    let explicit = format!("00-{FIXED_TRACE}-00f067aa0ba902b7-01");
    env.bus
        .publish_with(
            &Order { n: 2 },
            PublishOptions::new().header("traceparent", explicit.clone()),
        )
        .instrument(tracing::info_span!("other request"))
        .await
        .expect("publish");

    // 3: a garbage traceparent (set by hand, or by a foreign producer) is ignored: the event is
    // handled, in a trace of its own.
    env.bus
        .publish_with(
            &Order { n: 3 },
            PublishOptions::new().header("traceparent", "garbage-not-a-trace"),
        )
        .await
        .expect("publish");

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let got = tokio::time::timeout(T, rx.recv()).await;
        seen.push(got.expect("handler ran in time").expect("channel open"));
    }
    seen.sort_by_key(|s| s.0);
    let (_, trace1, header1) = &seen[0];
    assert_eq!(
        *trace1, request_trace,
        "handler 1 is in the request's trace"
    );
    let header1 = header1
        .as_deref()
        .expect("traceparent header written on publish");
    assert!(
        header1.contains(&request_trace.to_string()),
        "{header1} carries {request_trace}"
    );
    let (_, trace2, header2) = &seen[1];
    assert_eq!(trace2.to_string(), FIXED_TRACE);
    assert_eq!(header2.as_deref(), Some(explicit.as_str()));
    let (_, trace3, header3) = &seen[2];
    assert_eq!(header3.as_deref(), Some("garbage-not-a-trace"));
    assert_ne!(*trace3, TraceId::INVALID);
    assert_ne!(*trace3, request_trace);
    assert_ne!(trace3.to_string(), FIXED_TRACE);
    w.shutdown().await.expect("shutdown");

    // The exported spans: the `handle` span of event 1 is a child of its `publish` span.
    let spans = || exporter.get_finished_spans().expect("finished spans");
    eventually(T, "publish and handle spans exported", || async {
        let s = spans();
        s.iter().filter(|s| s.name == "handle").count() == 3
            && s.iter().filter(|s| s.name == "publish").count() == 3
    })
    .await;
    let s = spans();
    let publish1 = s
        .iter()
        .find(|s| s.name == "publish" && s.span_context.trace_id() == request_trace)
        .expect("publish span in the request's trace");
    let handle1 = s
        .iter()
        .find(|s| s.name == "handle" && s.span_context.trace_id() == request_trace)
        .expect("handle span in the request's trace");
    assert_eq!(handle1.parent_span_id, publish1.span_context.span_id());
    let _ = provider.shutdown();
}
