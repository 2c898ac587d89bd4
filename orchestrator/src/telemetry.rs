//! Logs and traces: a `tracing` subscriber with human or JSON logs and an
//! OpenTelemetry layer, OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, and W3C trace context carried in Kafka headers (`traceparent`), so
//! one trace runs from the webhook through the pipeline to the reply.
//!
//! Trace ids exist even without an exporter: they travel between services
//! and every log line inside a message's span carries its `trace_id`.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A phone number as logs show it: country code and last four digits.
pub use crate::mask::mask_phone;

/// The W3C trace-context header, in HTTP and in Kafka.
pub const TRACEPARENT: &str = "traceparent";

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// The log filter does not parse.
    #[error("log filter: {0}")]
    Filter(String),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// How logs and traces are emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`): spans are
    /// exported over OTLP/HTTP to `{endpoint}/v1/traces`; unset exports nothing.
    pub otlp_endpoint: Option<String>,
    /// `LOG_FORMAT=json`: one JSON object per line, else human-readable.
    pub json_logs: bool,
    /// Colour escape codes in human-readable logs: only when stderr is a
    /// terminal and `NO_COLOR` is unset (a log file or a collector gets plain text).
    pub ansi: bool,
    /// Which logs to write (`RUST_LOG` syntax).
    pub filter: String,
}

/// Keeps the tracer provider alive; flushes and stops it when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every finished span now (tests, before exit).
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing spans failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Builds the tracer provider for `config` (exporting over OTLP when an endpoint is set).
pub fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let builder = match &config.otlp_endpoint {
        None => builder,
        #[cfg(feature = "otlp")]
        Some(endpoint) => builder.with_batch_exporter(otlp_exporter(endpoint)?),
        // Without the exporter an endpoint is a configuration error, not a silent no-op.
        #[cfg(not(feature = "otlp"))]
        Some(endpoint) => {
            return Err(TelemetryError::Exporter(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT is {endpoint}, but this build has no `otlp` feature"
            )));
        }
    };
    Ok(builder.build())
}

/// The OTLP/HTTP span exporter to `{endpoint}/v1/traces`.
#[cfg(feature = "otlp")]
fn otlp_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    // reqwest is built without a default TLS provider: use ring's (an https collector needs it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// Installs the global subscriber (logs + OpenTelemetry layer) and the W3C
/// propagator; keep the returned value alive until exit.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let provider = tracer_provider(config)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // No busy/idle timings (two clock reads and a lock on every poll of every
    // instrumented future) and no thread attributes: a tenth of the pipeline's
    // CPU on the load benchmark. Context activation stays, for other
    // OpenTelemetry instrumentation that reads `Context::current()`.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("whatsapp-orchestrator"))
        .with_tracked_inactivity(false)
        .with_threads(false);
    let filter = tracing_subscriber::EnvFilter::try_new(&config.filter)
        .map_err(|e| TelemetryError::Filter(format!("RUST_LOG={:?}: {e}", config.filter)))?;
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = if config.json_logs {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr);
        registry.with(json).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_ansi(config.ansi).with_writer(std::io::stderr)).try_init()
    };
    installed.map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// The `traceparent` of the current span, when it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`, when it belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the trace in `traceparent` (an invalid value is ignored).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let parent = extract(traceparent);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to the trace in `traceparent` without making it its parent.
pub fn link_trace(span: &tracing::Span, traceparent: &str) {
    span.add_link(extract(traceparent).span().span_context().clone());
}

/// The remote context a `traceparent` value names (invalid when it is malformed).
fn extract(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The trace id of `span` as 32 hex digits (all zeros outside a trace).
pub fn trace_id_of(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}
