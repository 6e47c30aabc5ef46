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

/// The route template an HTTP request matched (`/api/collections/*`),
/// put in the response's extensions by [`LabelledRoutes`]: the metrics label
/// of an HTTP request. Requests that matched no route have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLabel(pub String);

/// A route template with its `{variables}` folded to `*`.
fn fold_template(template: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "*"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Routes whose answers carry their [`RouteLabel`].
pub trait LabelledRoutes<S> {
    /// `Router::route`, with every answer of the route labelled by its
    /// template (the metrics label; unmatched requests have none).
    fn route_labelled(self, path: &str, method_router: axum::routing::MethodRouter<S>) -> Self;
}

impl<S: Clone + Send + Sync + 'static> LabelledRoutes<S> for axum::Router<S> {
    fn route_labelled(self, path: &str, method_router: axum::routing::MethodRouter<S>) -> Self {
        let label = RouteLabel(fold_template(path));
        self.route(
            path,
            method_router.layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    use tracing::Instrument;
                    let label = label.clone();
                    // The request's own span (telemetry::RequestLayer) is
                    // started before routing and cannot be renamed: the
                    // route gets a span of its own, named after it.
                    let span = tracing::info_span!(
                        "route",
                        otel.name = %format!("{} {}", req.method(), label.0),
                        otel.kind = "internal",
                        http.route = %label.0,
                    );
                    async move {
                        let mut resp = next.run(req).await;
                        resp.extensions_mut().insert(label);
                        resp
                    }
                    .instrument(span)
                },
            )),
        )
    }
}

/// Every gRPC method the system's servers offer (`/package.Service/Method`):
/// the cbir.v1 services, health and reflection.
fn grpc_methods() -> &'static std::collections::HashSet<String> {
    static METHODS: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        use cbir_api::prost::Message;
        let mut out = std::collections::HashSet::new();
        for fds in [
            cbir_api::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = cbir_api::prost_types::FileDescriptorSet::decode(fds) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        out.insert(format!(
                            "/{package}.{service_name}/{}",
                            method.name.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        out
    })
}

/// The label of a request: the gRPC method it called when that method
/// exists, else the route it matched, else `other`. A label never comes
/// from what a client typed, so that unknown paths and methods cannot
/// grow the metrics without bound.
pub fn method_label(path: &str, route: Option<&RouteLabel>) -> String {
    if let Some(r) = route {
        return r.0.clone();
    }
    if grpc_methods().contains(path) {
        return path.to_string();
    }
    "other".into()
}

/// The label of a gRPC request, known before it is answered.
pub fn grpc_label(path: &str) -> Option<&'static str> {
    grpc_methods().get(path).map(String::as_str)
}

/// The `/metrics` route, to serve alone or merged into an HTTP app.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route_labelled(
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
            method_label("/cbir.v1.IndexService/Search", None),
            "/cbir.v1.IndexService/Search"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check", None),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/cbir.v1.IndexService/Nope", None), "other");
        assert_eq!(method_label("/x.y/z", None), "other");
        assert_eq!(method_label("/api/search", None), "other");
        let route = RouteLabel(fold_template(
            "/api/collections/{name}/images/{id}/thumbnail",
        ));
        assert_eq!(route.0, "/api/collections/*/images/*/thumbnail");
        assert_eq!(
            method_label("/api/collections/holiday/images/42/thumbnail", Some(&route)),
            "/api/collections/*/images/*/thumbnail"
        );
    }

    /// Thousands of random paths and methods, over HTTP and as gRPC, leave
    /// the metrics output the size a handful of routes gives it.
    #[tokio::test]
    async fn random_paths_do_not_grow_the_metrics() {
        use tower::ServiceExt;
        let m = Metrics::new("test");
        let app = axum::Router::new()
            .route_labelled("/api/items/{id}", axum::routing::get(|| async { "item" }))
            .fallback(|| async { (http::StatusCode::NOT_FOUND, "no") })
            .layer(crate::telemetry::RequestLayer(m.clone()));
        let send = |path: String, grpc: bool| {
            let app = app.clone();
            async move {
                let mut req = http::Request::builder().uri(path);
                if grpc {
                    req = req
                        .method(http::Method::POST)
                        .header(http::header::CONTENT_TYPE, "application/grpc");
                }
                app.oneshot(req.body(axum::body::Body::empty()).expect("request"))
                    .await
                    .expect("answer")
            }
        };
        for i in 0..10 {
            send(format!("/api/items/{i}"), false).await;
        }
        let baseline = m.render().len();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for i in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let path = match i % 3 {
                0 => format!("/api/items/{seed:x}"),
                1 => format!("/random/{seed:x}/{i}"),
                _ => format!("/cbir.v1.IndexService/M{seed:x}"),
            };
            send(path, i % 3 == 2).await;
        }
        let text = m.render();
        assert!(
            text.len() < baseline * 3,
            "3000 random requests grew the metrics from {baseline} to {} bytes",
            text.len()
        );
        assert!(text.contains(r#"method="/api/items/*""#), "{text}");
        assert!(text.contains(r#"method="other""#), "{text}");
        assert!(!text.contains("random"), "{text}");
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
