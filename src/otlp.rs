//! Optional OpenTelemetry export of the tracing spans (OTLP over gRPC), and
//! the trace context of a request as the parent of its span. Configured by
//! `otlp:` in the config file; without it nothing is exported and nothing
//! here runs. Logs stay on stderr either way.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::Deserialize;

/// Where and how spans are exported (`otlp:` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Fraction of traces sampled when the request carries no sampled
    /// parent (a sampled `traceparent` is always followed).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Bound on one export call, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Spans are sent in batches at least this often, milliseconds.
    #[serde(default = "default_export_interval_ms")]
    pub export_interval_ms: u64,
}

fn default_service_name() -> String {
    "portcullis".into()
}
fn default_sample_ratio() -> f64 {
    1.0
}
fn default_timeout_ms() -> u64 {
    3_000
}
fn default_export_interval_ms() -> u64 {
    5_000
}

impl OtlpConfig {
    /// Every problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            p.push(format!(
                "otlp.endpoint: '{}' is not an http(s) URL (e.g. http://127.0.0.1:4317)",
                self.endpoint
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            p.push("otlp.sample_ratio: between 0 and 1".into());
        }
        if self.timeout_ms == 0 || self.export_interval_ms == 0 {
            p.push("otlp.timeout_ms and otlp.export_interval_ms: at least 1".into());
        }
        p
    }

    /// The tracer provider exporting to the collector. Call inside the
    /// Tokio runtime: the gRPC channel lives on it.
    pub fn provider(&self) -> Result<SdkTracerProvider, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(Duration::from_millis(self.timeout_ms))
            .build()
            .map_err(|e| format!("otlp: cannot set up the exporter: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_millis(self.export_interval_ms))
                    .build(),
            )
            .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                self.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(self.service_name.clone())
                    .build(),
            )
            .build())
    }
}

/// The tracing layer that turns spans into OpenTelemetry spans of
/// `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("portcullis"))
}

/// Makes the request's `traceparent` (if any) the parent of `span`, so the
/// exported span joins the gateway's trace. Without an OpenTelemetry layer
/// installed this does nothing.
pub fn set_parent(span: &tracing::Span, headers: &crate::request::Headers) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(headers);
    // An error only means no OpenTelemetry layer is installed.
    let _ = span.set_parent(cx);
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_are_checked_and_defaulted() {
        let config = crate::config::Config::parse(
            "otlp:\n  endpoint: grpc://collector\n  sample_ratio: 2\n",
            std::path::Path::new("c.yaml"),
        )
        .unwrap();
        let otlp = config.otlp.as_ref().unwrap();
        assert_eq!(otlp.service_name, "portcullis");
        let problems = config
            .check(std::path::Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("otlp.endpoint") && problems.contains("otlp.sample_ratio"),
            "{problems}"
        );
        assert!(crate::config::Config::default().otlp.is_none());
    }
}
