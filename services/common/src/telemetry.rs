//! Logging and tracing setup: one place, called from each `main.rs`.
//!
//! Logs go to stderr (text for people, JSON for containers). Spans are
//! exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `otlp_endpoint` in the config) is set; the W3C trace-context propagator is
//! always installed so that trace ids flow between services.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_level: String,
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint; `OTEL_EXPORTER_OTLP_ENDPOINT` wins when set.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// Flushes spans at exit; keep it alive for the life of the process.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(err) = p.shutdown() {
                eprintln!("flushing traces failed: {err}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Call once, from a binary, inside a tokio
/// runtime (the OTLP exporter needs one).
pub fn init(service: &str, cfg: &TelemetryConfig) -> Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .map_err(|e| Error::Telemetry(format!("bad log level {:?}: {e}", cfg.log_level)))?;
    let fmt = match cfg.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| cfg.otlp_endpoint.clone());
    let (otel, provider) = match endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| Error::Telemetry(format!("otlp exporter: {e}")))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(service.to_string())
                        .build(),
                )
                .build();
            let tracer = provider.tracer(service.to_string());
            opentelemetry::global::set_tracer_provider(provider.clone());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| Error::Telemetry(format!("a global subscriber is already set: {e}")))?;
    Ok(TelemetryGuard { provider })
}

/// For tests: logs to the test writer only when `TEST_LOG=1`.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_test_writer()
                .try_init();
        }
    });
}

/// Installs a global subscriber that sends spans to `provider` (tests use an
/// in-memory exporter to check traces across services), with the W3C
/// propagator. Fails when a global subscriber is set already.
pub fn init_with_provider(provider: &SdkTracerProvider, service: &str) -> Result<()> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(service.to_string());
    tracing_subscriber::registry()
        .with(EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|e| Error::Telemetry(format!("a global subscriber is already set: {e}")))
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Puts the current span's trace context into outgoing gRPC metadata
/// (`traceparent`), so the callee's spans join the caller's trace, and the
/// internal token when one is set (see `grpc::set_outgoing_internal_token`).
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    crate::grpc::attach_internal_token(metadata);
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(metadata));
    });
}

/// A tower layer for every server: each request runs in a span whose parent
/// is the caller's trace context (from the `traceparent` header), and is
/// counted and timed in `metrics` by method and status code.
#[derive(Clone)]
pub struct RequestLayer(pub std::sync::Arc<crate::metrics::Metrics>);

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for RequestService<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<S::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        // A gRPC method is known now; an HTTP route once the router matched
        // it (`LabelledRoutes` gives it a span of its own, under this one).
        let path = req.uri().path().to_string();
        let http_method = req.method().clone();
        let early = crate::metrics::grpc_label(&path).unwrap_or("http");
        let span = tracing::info_span!(
            "request",
            otel.name = %format!("{http_method} {early}"),
            otel.kind = "server",
            http.route = %early,
        );
        let _ = span.set_parent(parent);
        let started = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let r = fut.await;
                let code = match &r {
                    // gRPC errors come as trailers-only responses (status in
                    // the headers); a success carries it in the trailers.
                    Ok(resp) => match resp.headers().get("grpc-status") {
                        Some(v) => v.to_str().unwrap_or("?").to_string(),
                        None if resp
                            .headers()
                            .get("content-type")
                            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc")) =>
                        {
                            "0".to_string()
                        }
                        None => resp.status().as_u16().to_string(),
                    },
                    Err(_) => "transport".to_string(),
                };
                let route = r
                    .as_ref()
                    .ok()
                    .and_then(|resp| resp.extensions().get::<crate::metrics::RouteLabel>());
                let method = crate::metrics::method_label(&path, route);
                metrics.observe(&method, &code, started.elapsed().as_secs_f64());
                r
            }
            .instrument(span),
        )
    }
}
