//! One replica of a shard killed with SIGKILL under load.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use tonic::transport::Channel;

use super::{
    add, answers, client, compare, same, start_gateway, start_shard, Ranked, CLASSES, COLLECTION,
};
use crate::system::{subset, System};

/// Not a test: the body of a `cbir-index` replica process for the SIGKILL
/// test below, which starts this test binary again with
/// `CBIR_TEST_INDEX_REPLICA` set (the index's own binary belongs to another
/// package). Configured through the INDEX_* environment like the binary.
#[test]
#[ignore = "started by a_killed_replica_of_a_shard_costs_no_search"]
fn index_replica_process() {
    if std::env::var_os("CBIR_TEST_INDEX_REPLICA").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cfg = cbir_index::Config::load(None).expect("index config");
        let l = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .expect("bind");
        cbir_index::serve(cfg, l, std::future::pending())
            .await
            .expect("serve");
    });
}

fn spawn_replica(database_url: &str, port: u16, metrics: u16, shard: u32, count: u32) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "shards::kill::index_replica_process",
            "--ignored",
            "--nocapture",
        ])
        .env("CBIR_TEST_INDEX_REPLICA", "1")
        .env("INDEX_DATABASE_URL", database_url)
        .env("INDEX_LISTEN", format!("127.0.0.1:{port}"))
        .env("INDEX_SHARD__ID", shard.to_string())
        .env("INDEX_SHARD__COUNT", count.to_string())
        .env("INDEX_FOLLOW_MS", "200")
        .env("INDEX_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start an index replica")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until the index process on `addr` answers.
async fn wait_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            if IndexServiceClient::new(ch)
                .list_collections(pb::ListCollectionsRequest {})
                .await
                .is_ok()
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "index replica on {addr} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Searches an index process answered, from its /metrics.
async fn searches_served(metrics_port: u16) -> u64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cbir_requests_total") && l.contains("IndexService/Search\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_of_a_shard_costs_no_search() {
    let sys = System::start(|_| {}).await;
    let files = subset("caltech101", &sys.dir.path().join("up"), CLASSES, 3);
    add(&sys.url(), &files).await;
    let db = sys.index_database_url.clone();
    // Shard 0: two replica processes; shard 1: one, in this process.
    let ports = [free_port(), free_port()];
    let metrics = [free_port(), free_port()];
    let mut replicas: Vec<Child> = ports
        .iter()
        .zip(metrics)
        .map(|(&p, m)| spawn_replica(&db, p, m, 0, 2))
        .collect();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    for a in &addrs {
        wait_up(*a).await;
    }
    let other = start_shard(&db, 1, 2).await;
    let gw = start_gateway(&sys, &[addrs.clone(), vec![other.addr]]).await;
    let expected = answers(&sys.url(), &files[..4]).await;

    // Searches in four streams; the first replica of shard 0 is killed a
    // third of the way in.
    let mut streams = Vec::new();
    for s in 0..4 {
        let (url, queries, expected) = (gw.url.clone(), files[..4].to_vec(), expected.clone());
        streams.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..12 {
                let q = (s + i) % queries.len();
                let data = std::fs::read(&queries[q]).expect("read");
                let mode = [pb::SearchMode::Partition, pb::SearchMode::Exact][i % 2];
                let want = &expected[q * 3 + 2 * (i % 2)].1;
                let r = client(&url)
                    .await
                    .search(pb::SearchRequest {
                        query: Some(pb::search_request::Query::Image(data)),
                        collection: COLLECTION.into(),
                        top_k: 10,
                        mode: mode as i32,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(r) => {
                        let got: Ranked = r
                            .into_inner()
                            .results
                            .into_iter()
                            .map(|h| (h.id, h.distance, h.score))
                            .collect();
                        if !same(&got, want) {
                            failed.push(format!("query {q} {mode:?}: {got:?}, want {want:?}"));
                        }
                    }
                    Err(e) => failed.push(format!("query {q} {mode:?}: {e}")),
                }
            }
            failed
        }));
    }
    // Killed once it has served searches of this load.
    let deadline = Instant::now() + Duration::from_secs(30);
    while searches_served(metrics[0]).await < 2 {
        assert!(
            Instant::now() < deadline,
            "replica 0 of shard 0 served no search"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas[0].kill().expect("SIGKILL");
    let _ = replicas[0].wait();
    let mut failed = Vec::new();
    for s in streams {
        failed.extend(s.await.expect("stream"));
    }
    assert!(
        failed.is_empty(),
        "searches failed or differed: {failed:#?}"
    );

    // The surviving replica still answers alone.
    let after = answers(&gw.url, &files[..2]).await;
    compare("after the kill", &expected[..after.len()], &after);
    gw.stop().await;
    other.stop().await;
    for mut r in replicas {
        let _ = r.kill();
        let _ = r.wait();
    }
    sys.shutdown().await;
}
