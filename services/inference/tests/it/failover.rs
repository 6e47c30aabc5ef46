//! Two real `cbir-inference` processes behind the gateway; one is killed
//! with SIGKILL in the middle of a search load: no search fails (the gateway
//! retries a call cut by the dead replica on the live one and skips the
//! dead one afterwards). Then the last replica is killed too: searches fail
//! at once with UNAVAILABLE naming the inference service, and work again
//! as soon as a replica is back.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use cbir_api::v1::search_service_client::SearchServiceClient;
use tonic::transport::Channel;

use crate::harness::{shared_data, weights};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(port: u16) -> Replica {
    Replica(
        Command::new(env!("CARGO_BIN_EXE_cbir-inference"))
            .env("INFERENCE_LISTEN", format!("127.0.0.1:{port}"))
            .env("INFERENCE_MODEL__WEIGHTS", weights())
            .env("INFERENCE_BATCHER__MAX_QUEUE_DELAY_US", "2000")
            .env("INFERENCE_DEVICE__TORCH_THREADS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cbir-inference"),
    )
}

async fn images_served(port: u16) -> u64 {
    let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_lazy();
    InferenceServiceClient::new(ch)
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .map(|r| r.into_inner().batcher.map_or(0, |b| b.images))
        .unwrap_or(0)
}

async fn wait_serving(port: u16) {
    for _ in 0..600 {
        if cbir_common::grpc::probe(
            &format!("127.0.0.1:{port}"),
            "cbir.v1.InferenceService",
            &Default::default(),
        )
        .await
        .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica on {port} did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_fails_no_search() {
    cbir_common::telemetry::init_for_tests();
    let (p1, p2) = (free_port(), free_port());
    let mut r1 = spawn(p1);
    let mut r2 = spawn(p2);
    let dir = tempfile::tempdir().expect("tmp");
    let index_cfg = cbir_index::Config {
        database_url: format!("sqlite://{}", dir.path().join("index.db").display()),
        inference_url: None,
        ..Default::default()
    };
    let il = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let index_addr = il.local_addr().expect("addr");
    tokio::spawn(cbir_index::serve(index_cfg, il, std::future::pending()));
    let mut gcfg = cbir_gateway::Config {
        inference_urls: vec![
            format!("http://127.0.0.1:{p1}"),
            format!("http://127.0.0.1:{p2}"),
        ],
        index_urls: vec![format!("http://{index_addr}")],
        ..Default::default()
    };
    gcfg.timeouts.connect_ms = 500;
    let gl = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gaddr = gl.local_addr().expect("addr");
    tokio::spawn(cbir_gateway::serve(gcfg, gl, std::future::pending()));
    // Both replicas load the model.
    for port in [p1, p2] {
        wait_serving(port).await;
    }
    let ch = Channel::from_shared(format!("http://{gaddr}"))
        .expect("uri")
        .connect_lazy();
    let gateway = SearchServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut files: Vec<_> = std::fs::read_dir(shared_data().join("flowers5/daisy"))
        .expect("daisy")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let images: Vec<Vec<u8>> = files
        .iter()
        .take(8)
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let added = gateway
        .clone()
        .add_images(pb::AddImagesRequest {
            collection: "f".into(),
            images: images
                .iter()
                .enumerate()
                .map(|(i, d)| pb::NewImage {
                    file_name: format!("{i}.jpg"),
                    data: d.clone(),
                    ..Default::default()
                })
                .collect(),
            create_collection: true,
            replace: false,
        })
        .await
        .expect("add images")
        .into_inner();
    assert_eq!(added.added, 8);

    let before = (images_served(p1).await, images_served(p2).await);
    let mut streams = Vec::new();
    for s in 0..4 {
        let (mut g, images) = (gateway.clone(), images.clone());
        streams.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..20 {
                let r = g
                    .search(pb::SearchRequest {
                        query: Some(pb::search_request::Query::Image(
                            images[(s * 2 + i) % images.len()].clone(),
                        )),
                        collection: "f".into(),
                        top_k: 3,
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = r {
                    failures.push(format!("{:?}: {}", e.code(), e.message()));
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = (images_served(p1).await, images_served(p2).await);
    r2.0.kill().expect("SIGKILL the second replica");
    let mut failures = Vec::new();
    for s in streams {
        failures.extend(s.await.expect("stream"));
    }
    assert!(failures.is_empty(), "searches failed: {failures:?}");
    assert!(
        during.0 > before.0 && during.1 > before.1,
        "both replicas served searches before the kill: {before:?} then {during:?}"
    );

    // The last replica killed during searches: each fails with UNAVAILABLE
    // naming the inference service (no hang, no other code).
    let search = |i: usize| {
        let (mut g, data) = (gateway.clone(), images[i % images.len()].clone());
        async move {
            g.search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Image(data)),
                collection: "f".into(),
                top_k: 3,
                ..Default::default()
            })
            .await
        }
    };
    let load: Vec<_> = (0..8).map(|i| tokio::spawn(search(i))).collect();
    r1.0.kill().expect("SIGKILL the last replica");
    r1.0.wait().expect("reap");
    for t in load {
        if let Err(e) = t.await.expect("task") {
            assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        }
    }
    for i in 0..3 {
        let started = std::time::Instant::now();
        let e = search(i).await.expect_err("no inference replica is up");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("inference"), "{}", e.message());
        assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    }
    // Back: searches work again without restarting anything else.
    let _r1 = spawn(p1);
    wait_serving(p1).await;
    let back = std::time::Instant::now();
    loop {
        match search(0).await {
            Ok(r) => {
                assert_eq!(r.into_inner().results.len(), 3);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "searches did not recover: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    println!(
        "searches recovered {:.2} s after the replica was serving again",
        back.elapsed().as_secs_f64()
    );
}
