//! Refined ranking (issue 16) through the real services over REST: the
//! default mode and what ordered the results, the collection's refinement
//! state, and a refresh started by an admin and followed to its end; every
//! answer checked against openapi.json.

use reqwest::Method;
use serde_json::{json, Value};

use crate::images::{key, upload, Api};
use crate::system::{flowers_subset, System};
use cbir_gateway::auth::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refined_is_the_default_and_a_refresh_is_followed() {
    let sys = System::start(|c| {
        c.auth.keys = vec![
            key("reader", Role::Search),
            key("indexer", Role::Index),
            key("root", Role::Admin),
        ];
    })
    .await;
    let api = Api {
        http: reqwest::Client::new(),
        base: sys.url(),
    };
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "rose", "tulip"], 6);
    let ids = upload(&api, &files).await;
    assert_eq!(ids.len(), 18);

    // The default mode is refined: the image itself first, the raw
    // similarity shown, the rest by score.
    let body = json!({"collection": "img", "image_id": ids[4], "top_k": 8});
    let (status, v) = api
        .call(
            Method::POST,
            "/api/search",
            "/api/search",
            Some("secret-reader"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mode"], "refined");
    assert_eq!(v["ranked_by"], "refined_score");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 8);
    assert_eq!(results[0]["id"], ids[4]);
    assert_eq!(results[0]["similarity"], 1.0);
    let score = |r: &Value| r["score"].as_f64().expect("score");
    assert!(results[1..]
        .windows(2)
        .all(|w| score(&w[0]) >= score(&w[1])));
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        let d = r["distance"].as_f64().expect("distance");
        assert!((r["similarity"].as_f64().expect("similarity") - 1.0 / (1.0 + d)).abs() < 1e-6);
    }
    // Another mode by name orders by distance, its score the similarity.
    let body = json!({"collection": "img", "image_id": ids[4], "top_k": 8, "mode": "probe"});
    let (_, p) = api
        .call(
            Method::POST,
            "/api/search",
            "/api/search",
            Some("secret-reader"),
            Some(body),
        )
        .await;
    assert_eq!(
        (p["mode"].as_str(), p["ranked_by"].as_str()),
        (Some("probe"), Some("distance"))
    );
    for r in p["results"].as_array().expect("results") {
        assert_eq!(r["score"], r["similarity"]);
    }

    // The upkeep's own refresh after the uploads (their neighbours went
    // stale) ends first: a request while it runs joins it, and its count
    // then covers both.
    for _ in 0..200 {
        let (_, s) = api
            .call(
                Method::GET,
                "/api/collections/{name}",
                "/api/collections/img",
                Some("secret-reader"),
                None,
            )
            .await;
        if s["refinement"]["stale"] == 0 && s["refinement"]["operation_id"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A refresh: admin only; followed to its end; the state shows it.
    let refine = "/api/collections/{name}/refine";
    for k in ["secret-reader", "secret-indexer"] {
        let (status, _) = api
            .call(
                Method::POST,
                refine,
                "/api/collections/img/refine",
                Some(k),
                None,
            )
            .await;
        assert_eq!(status, 403, "{k} may not refresh");
    }
    let (status, v) = api
        .call(
            Method::POST,
            refine,
            "/api/collections/img/refine",
            Some("secret-root"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let op = v["operation_id"]
        .as_str()
        .expect("operation id")
        .to_string();
    let mut last = Value::Null;
    for _ in 0..200 {
        let path = format!("/api/operations/{op}");
        let (status, o) = api
            .call(
                Method::GET,
                "/api/operations/{id}",
                &path,
                Some("secret-reader"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{o}");
        last = o;
        if last["state"] != "running" && last["state"] != "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(
        (last["done"].as_u64(), last["total"].as_u64()),
        (Some(18), Some(18)),
        "{last}"
    );
    let (status, s) = api
        .call(
            Method::GET,
            "/api/collections/{name}",
            "/api/collections/img",
            Some("secret-reader"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["refinement"]["stale"], 0, "{s}");
    assert!(s["refinement"]["operation_id"].is_null(), "{s}");
    // 1280-d: the f32 copy, its int8 code, its scale and one float.
    assert_eq!(s["refinement"]["bytes"], 18 * (1280 * 5 + 8), "{s}");
    // An unknown collection is a 404 naming it.
    let (status, e) = api
        .call(
            Method::POST,
            refine,
            "/api/collections/nope/refine",
            Some("secret-root"),
            None,
        )
        .await;
    assert_eq!(status, 404, "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
    sys.shutdown().await;
}
