//! `openapi.json` held to the router: every route is documented with the
//! methods it answers and nothing else, and the answers a gateway gives
//! without its backing services (settings, health, errors) fit the
//! document's schemas. The answers that need the services (collections,
//! search, stats, jobs) are checked in the cli crate's system tests
//! (`services/cli/tests/it/openapi.rs`).

use std::sync::Arc;

use axum::body::Body;
use cbir_gateway::http::openapi::{check_answer, document};
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

/// A gateway whose backing services are all down.
async fn router() -> axum::Router {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let cfg = cbir_gateway::Config {
        inference_urls: vec![down.clone()],
        index_urls: vec![down.clone()],
        training_urls: vec![down],
        retries: 0,
        ..Default::default()
    };
    let gateway = cbir_gateway::Gateway::new(Arc::new(cfg))
        .await
        .expect("gateway");
    cbir_gateway::http::router(gateway)
}

/// A path of `template` with each `{variable}` filled in.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(app: &axum::Router, method: Method, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("answer");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_route_and_method_is_documented_and_nothing_else() {
    let doc = document();
    let documented = doc["paths"].as_object().expect("paths");
    let routes = cbir_gateway::http::route_paths();
    for r in &routes {
        // The UI's modules are documented by a few examples, not one by one.
        if r.starts_with("/assets/") {
            continue;
        }
        assert!(documented.contains_key(*r), "openapi.json lacks {r}");
    }
    for p in documented.keys() {
        assert!(
            routes.contains(&p.as_str()),
            "openapi.json documents {p}, which the gateway does not serve"
        );
    }
    let app = router().await;
    for r in routes {
        if !documented.contains_key(r) {
            continue;
        }
        for m in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            let (status, _) = call(&app, m.clone(), &concrete(r)).await;
            let served = status != StatusCode::METHOD_NOT_ALLOWED;
            let in_doc = !doc["paths"][r][m.as_str().to_ascii_lowercase()].is_null();
            assert_eq!(
                served, in_doc,
                "{m} {r}: served {served}, documented {in_doc}"
            );
        }
    }
}

#[tokio::test]
async fn answers_without_the_services_fit_the_schemas() {
    let doc = document();
    let app = router().await;
    for (method, path, expected) in [
        (Method::GET, "/api/config", StatusCode::OK),
        (Method::GET, "/api/health", StatusCode::OK),
        (
            Method::GET,
            "/api/collections",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (Method::GET, "/api/jobs", StatusCode::SERVICE_UNAVAILABLE),
        (
            Method::POST,
            "/api/search",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (Method::GET, "/api/models", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (status, body) = call(&app, method.clone(), path).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        if let Err(e) = check_answer(&doc, method.as_str(), path, status.as_u16(), &body) {
            panic!("{method} {path} answered {body}, against openapi.json: {e:#?}");
        }
    }
}

#[tokio::test]
async fn a_renamed_field_fails_the_check() {
    let doc = document();
    let app = router().await;
    let (status, mut body) = call(&app, Method::GET, "/api/config").await;
    check_answer(&doc, "get", "/api/config", status.as_u16(), &body).expect("fits as answered");
    let obj = body.as_object_mut().expect("object");
    let v = obj.remove("max_top_k").expect("max_top_k");
    obj.insert("max_topk".into(), v);
    let errors = check_answer(&doc, "get", "/api/config", 200, &body).expect_err("a renamed field");
    assert!(
        errors.iter().any(|e| e.contains("\"max_top_k\""))
            && errors.iter().any(|e| e.contains("\"max_topk\"")),
        "{errors:?}"
    );
}

#[test]
fn every_error_code_is_documented() {
    let doc = document();
    let code = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"];
    let documented: Vec<&str> = code["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: Vec<&str> = cbir_common::error::Code::ALL
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(documented, all, "the Error schema's codes");
}
