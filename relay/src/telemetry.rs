//! Logs, and OpenTelemetry traces when asked for.
//!
//! Traces are off unless the standard variables ask for them: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER=otlp`); `OTEL_SDK_DISABLED=true`
//! or `OTEL_TRACES_EXPORTER=none` turn them off. They go over OTLP/gRPC; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*` apply as usual.
//!
//! What is traced: each Publish (a span `relay.publish`, child of the client's W3C `traceparent`
//! when the call carries one, with `redis.append` and `nats.publish` inside); the trace context
//! goes on with the message in its NATS headers, and every relay that hands the message to its
//! streams (broadcast, perUser or a queue worker) records `relay.deliver` in the same trace. So one trace shows a message from the
//! publisher to every relay that delivered it. While traces are off, none of this costs anything:
//! no span is made and no header is added.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Whether traces are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Whether the environment asks for traces.
fn wanted() -> bool {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        Some("none") => false,
        Some(_) => true,
        None => var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some(),
    }
}

/// Sets up logging (`format`: text or json, filtered by `RUST_LOG`) and, when the environment
/// asks for them, trace export. `instance`: this replica's id, recorded as `service.instance.id`.
/// Must run inside the Tokio runtime (the exporter's connection lives there).
pub fn init(format: &str, instance: &str) -> anyhow::Result<()> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let fmt = tracing_subscriber::fmt::layer();
    let logs = if format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let logs = logs.with_filter(filter());
    let traces = if wanted() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "relay".into()))
            .with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance.to_owned()))
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("relay");
        let _ = PROVIDER.set(provider);
        // Only the relay's own spans: the fmt filter above governs logs, this one traces.
        let only_relay = tracing_subscriber::filter::Targets::new().with_target("relay", tracing::Level::INFO);
        Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_relay))
    } else {
        None
    };
    tracing_subscriber::registry().with(logs).with(traces).try_init()?;
    Ok(())
}

/// Sends what is buffered (at shutdown).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// A span, or nothing while traces are off.
#[macro_export]
macro_rules! trace_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::enabled() { tracing::info_span!($($arg)*) } else { tracing::Span::none() }
    };
}

/// The client's trace context of a call: None while traces are off or when it sent none. Read
/// only for callers already authenticated (a client's `traceparent` chooses the trace id and,
/// with the default parent-based sampler, whether it is recorded).
pub fn parent(metadata: &tonic::metadata::MetadataMap) -> Option<opentelemetry::Context> {
    if !enabled() || metadata.get("traceparent").is_none() {
        return None;
    }
    Some(TraceContextPropagator::new().extract(&Metadata(metadata)))
}

/// The server span of one publish: a child of the client's context, if it sent one.
pub fn call_span(name: &'static str, parent: Option<&opentelemetry::Context>) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("call", otel.name = name, otel.kind = "server");
    if let Some(cx) = parent {
        let _ = span.set_parent(cx.clone());
    }
    span
}

/// NATS headers that carry the current span's context on to the relays that deliver (None while
/// traces are off).
pub fn headers() -> Option<async_nats::HeaderMap> {
    if !enabled() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut NatsHeaders(&mut headers));
    Some(headers)
}

/// The span of a delivery of a message that arrived with `headers` (none without a trace context).
pub fn delivery_span(headers: Option<&async_nats::HeaderMap>, channel: &str, seq: u64) -> tracing::Span {
    let Some(headers) = headers.filter(|_| enabled()) else { return tracing::Span::none() };
    if headers.get("traceparent").is_none() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("deliver", otel.name = "relay.deliver", otel.kind = "consumer", channel, seq);
    let _ = span.set_parent(TraceContextPropagator::new().extract(&NatsHeadersRead(headers)));
    span
}

struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

/// The longest `tracestate` passed on (the rest of a message's headers must stay small: see
/// `HEADER_ROOM` in `rpc/publish.rs`).
const MAX_TRACESTATE: usize = 256;

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == "tracestate" && value.len() > MAX_TRACESTATE {
            return;
        }
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeadersRead<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"].into_iter().filter(|k| self.0.get(*k).is_some()).collect()
    }
}
