//! OpenTelemetry export (cargo feature `otel`): the `idem.request` span of every protected
//! request, with its decision attributes, sent over OTLP/HTTP (protobuf) to
//! `ENDPOINT/v1/traces` in batches, and flushed on shutdown.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// The exporter; [`Otel::shutdown`] flushes the spans not yet sent.
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Flushes pending spans and stops the exporter. Blocking: call it outside the
    /// async runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("idem: flushing OpenTelemetry spans failed: {e}");
        }
    }
}

/// The traces URL for a collector base `endpoint`, as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// specifies: `http://collector:4318` → `http://collector:4318/v1/traces`.
pub fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// A tracing layer exporting `idem.request` spans to the collector at `endpoint`.
/// Call it before starting an async runtime (the HTTP client is a blocking one that
/// runs on the exporter's own thread).
pub fn layer<S>(endpoint: &str) -> anyhow::Result<(Otel, impl Layer<S>)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("idem").build())
        .build();
    let tracer = provider.tracer("idem");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|meta| {
            meta.target() == idem::layer::REQUEST_SPAN_TARGET
        }));
    Ok((Otel { provider }, layer))
}
