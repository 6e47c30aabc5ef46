//! Prometheus metrics of a service: request counts and latencies per method
//! (a tower layer for tonic and axum servers), the service's own gauges, and
//! the text endpoint `/metrics`.

use std::future::Future;
use std::sync::Arc;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Latency buckets in seconds: interactive searches live between 1 ms and
/// 1 s, bulk batches up to a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Refreshes the service's gauges just before each scrape.
    collect: parking_lot::Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl Metrics {
    /// Metrics of `service` (a constant label on every series).
    pub fn new(service: &str) -> Arc<Self> {
        let registry = Registry::new_custom(
            Some("cbir".into()),
            Some([("service".to_string(), service.to_string())].into()),
        )
        .expect("valid registry prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by method and status code",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to answer a request, by method",
            )
            .buckets(BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("registers once");
        registry
            .register(Box::new(latency.clone()))
            .expect("registers once");
        Arc::new(Self {
            registry,
            requests,
            latency,
            collect: parking_lot::Mutex::new(None),
        })
    }

    /// Sets the function that refreshes gauges before a scrape.
    pub fn on_collect(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.collect.lock() = Some(Box::new(f));
    }

    pub fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.requests.with_label_values(&[method, code]).inc();
        self.latency.with_label_values(&[method]).observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(f) = &*self.collect.lock() {
            f();
        }
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A path as a low-cardinality method label: gRPC methods as they are, REST
/// routes with their variable segments folded, everything else `other`.
pub fn method_label(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    let first = parts.next().unwrap_or("");
    if first.contains('.') {
        return path.to_string();
    }
    if first != "api" {
        return "ui".into();
    }
    match (parts.next(), parts.next(), parts.next()) {
        (Some("collections"), Some(_), Some(rest)) => format!("/api/collections/*/{rest}"),
        (Some("collections"), Some(_), None) => "/api/collections/*".into(),
        (Some("jobs"), Some(_), _) => "/api/jobs/*".into(),
        (Some(route), _, _) => format!("/api/{route}"),
        (None, _, _) => "/api".into(),
    }
}

/// The `/metrics` route, to serve alone or merged into an HTTP app.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }
        }),
    )
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A `/metrics` endpoint running in the background; stops when dropped.
pub struct MetricsServer {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// `start` on `addr` when one is configured. Metrics are not worth refusing
/// to serve for: a failure to bind is logged and the service goes on.
pub async fn start_if(addr: Option<&str>, metrics: &Arc<Metrics>) -> Option<MetricsServer> {
    start(addr?, metrics.clone())
        .await
        .map_err(|e| tracing::error!(error = %e, "metrics endpoint disabled"))
        .ok()
}

/// Binds `addr` and serves `/metrics` until the returned guard is dropped.
pub async fn start(addr: &str, metrics: Arc<Metrics>) -> crate::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Server(format!("cannot listen for metrics on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| crate::Error::Server(e.to_string()))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, metrics, async move {
            let _ = rx.await;
        })
        .await
        {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    tracing::info!(addr = %local, "metrics on /metrics");
    Ok(MetricsServer {
        addr: local,
        stop: Some(tx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_few() {
        assert_eq!(
            method_label("/cbir.v1.IndexService/Search"),
            "/cbir.v1.IndexService/Search"
        );
        assert_eq!(method_label("/api/search"), "/api/search");
        assert_eq!(
            method_label("/api/collections/holiday/images/42/thumbnail"),
            "/api/collections/*/images"
        );
        assert_eq!(method_label("/api/collections/x"), "/api/collections/*");
        assert_eq!(method_label("/api/jobs/abc"), "/api/jobs/*");
        assert_eq!(method_label("/assets/app.js"), "ui");
    }

    #[test]
    fn renders_requests_and_gauges() {
        let m = Metrics::new("test");
        let g = prometheus::IntGauge::new("queue_depth", "queued").expect("gauge");
        m.registry.register(Box::new(g.clone())).expect("register");
        let g2 = g.clone();
        m.on_collect(move || g2.set(7));
        m.observe("/api/search", "200", 0.012);
        let text = m.render();
        assert!(
            text.contains(
                r#"cbir_requests_total{code="200",method="/api/search",service="test"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"cbir_queue_depth{service="test"} 7"#),
            "{text}"
        );
        assert!(
            text.contains("cbir_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
