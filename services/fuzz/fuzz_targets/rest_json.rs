//! Any bytes, as the body (or the path) of a REST request, sent through the
//! gateway's real router: every answer is a client error or, for input that
//! passed validation, "upstream unavailable" (nothing runs behind this
//! gateway); never a panic, never a 500.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Harness {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let roots = std::env::temp_dir().join("cbir-fuzz-roots");
        std::fs::create_dir_all(roots.join("set/a")).expect("roots");
        // Port 1 on loopback: refused at once, so validated requests end
        // quickly as "unavailable".
        let mut cfg = cbir_gateway::Config {
            inference_urls: vec!["http://127.0.0.1:1".into()],
            index_urls: vec!["http://127.0.0.1:1".into()],
            training_urls: vec!["http://127.0.0.1:1".into()],
            allowed_roots: vec![roots],
            retries: 0,
            ..Default::default()
        };
        cfg.timeouts.connect_ms = 50;
        cfg.limits.max_request_bytes = 1 << 20;
        let (app, _gateway) = rt.block_on(cbir_gateway::app(cfg)).expect("gateway app");
        Harness { rt, app }
    })
}

const JSON_ROUTES: &[&str] = &[
    "/api/collections",
    "/api/collections/fz/index-jobs",
    "/api/search",
    "/api/search?top_k=3&collection=fz",
    "/api/training/jobs",
    "/api/collections/fz/rebuild",
    "/api/models/m/1/activate",
    "/api/collections/fz/clear",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let n = JSON_ROUTES.len() as u8;
    let request = if which % (n + 2) < n {
        let route = JSON_ROUTES[usize::from(which % (n + 2))];
        http::Request::post(route)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_vec()))
    } else if which % (n + 2) == n {
        // A multipart search with a fuzzed body.
        http::Request::post("/api/search")
            .header(
                http::header::CONTENT_TYPE,
                "multipart/form-data; boundary=XyZ",
            )
            .body(axum::body::Body::from(body.to_vec()))
    } else {
        // Fuzzed path and query (collection names, ids, parameters).
        let Ok(path) = std::str::from_utf8(body) else {
            return;
        };
        http::Request::get(format!("/api/{path}")).body(axum::body::Body::empty())
    };
    let Ok(request) = request else {
        return;
    };
    let status =
        h.rt.block_on(h.app.clone().oneshot(request))
            .expect("infallible")
            .status();
    assert!(
        status.is_success()
            || status.is_client_error()
            || status == http::StatusCode::BAD_GATEWAY
            || status == http::StatusCode::SERVICE_UNAVAILABLE
            || status == http::StatusCode::GATEWAY_TIMEOUT,
        "status {status} for {:?}",
        String::from_utf8_lossy(data)
    );
});
