//! One search through the gateway is one trace, with spans from the
//! gateway, the inference service and the index service (the W3C trace
//! context travels in gRPC metadata), exported here to memory.

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

use crate::system::{flowers_subset, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_search_is_one_trace_across_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    cbir_common::telemetry::init_with_provider(&provider, "cbir-test").expect("subscriber");
    let sys = System::start(|_| {}).await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let files = flowers_subset(&sys.dir.path().join("up"), &["daisy", "tulip"], 3);
    let form = files.iter().fold(reqwest::multipart::Form::new(), |f, p| {
        let part = reqwest::multipart::Part::bytes(std::fs::read(p).expect("read")).file_name(
            format!("set/x/{}", p.file_name().expect("n").to_string_lossy()),
        );
        f.part("files", part)
    });
    let r = http
        .post(format!("{base}/api/collections/t/images?create=true"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let _ = provider.force_flush();
    exporter.reset();

    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(std::fs::read(&files[0]).expect("read")).file_name("q.jpg"),
    );
    let r = http
        .post(format!("{base}/api/search?collection=t&top_k=3"))
        .multipart(form)
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().expect("spans");
    let root = spans
        .iter()
        .find(|s| s.name == "POST /api/search")
        .unwrap_or_else(|| {
            panic!(
                "no gateway span; got {:?}",
                spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
            )
        });
    let trace = root.span_context.trace_id();
    let names: HashSet<String> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .map(|s| s.name.to_string())
        .collect();
    for expected in [
        "POST /api/search",
        "gateway.search",
        "POST /cbir.v1.InferenceService/EmbedImage",
        "decode",
        "batch_wait",
        "forward_pass",
        "POST /cbir.v1.IndexService/Search",
        "partition_scan",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from the trace: {names:?}"
        );
    }
    // Every span of this search is in that one trace.
    let search_spans = spans
        .iter()
        .filter(|s| s.name.contains("EmbedImage") || s.name.contains("IndexService/Search"))
        .count();
    let in_trace = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .filter(|s| s.name.contains("EmbedImage") || s.name.contains("IndexService/Search"))
        .count();
    assert_eq!(search_spans, in_trace);

    // Indexing traces reach the database.
    exporter.reset();
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(std::fs::read(&files[5]).expect("read"))
            .file_name("set/y/new.jpg"),
    );
    let _ = http
        .post(format!("{base}/api/collections/t/images"))
        .multipart(form)
        .send()
        .await
        .expect("add");
    let expected = [
        "gateway.add_images",
        "POST /cbir.v1.InferenceService/Embed",
        "POST /cbir.v1.IndexService/Upsert",
        "db.upsert",
    ];
    // A server's span ends after its response is on the wire, so the
    // client can have its answer a moment before the last span is
    // exported: wait for them (up to 5 s) rather than race them.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let names = loop {
        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().expect("spans");
        let names: HashSet<String> = spans
            .iter()
            .find(|s| s.name == "POST /api/collections/*/images")
            .map(|root| {
                spans
                    .iter()
                    .filter(|s| s.span_context.trace_id() == root.span_context.trace_id())
                    .map(|s| s.name.to_string())
                    .collect()
            })
            .unwrap_or_default();
        if expected.iter().all(|e| names.contains(*e)) || std::time::Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for expected in expected {
        assert!(names.contains(expected), "{expected} missing: {names:?}");
    }
    sys.shutdown().await;
}
