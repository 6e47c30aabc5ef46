//! A sharded index behind the gateway (issue 18): three index services on
//! one database, each holding the partitions `shard_of` gives it, answer
//! every search mode as one node does on the same data; writes through the
//! sharded gateway land on the owning shard; one replica of a shard killed
//! with SIGKILL under load costs no search.

mod equal;
mod kill;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::search_service_client::SearchServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::system::System;

pub(super) const CLASSES: &[&str] = &[
    "accordion",
    "airplanes",
    "anchor",
    "ant",
    "barrel",
    "bonsai",
    "butterfly",
    "camera",
    "chair",
    "crab",
];
pub(super) const COLLECTION: &str = "sharded";

/// An index service (in this process) on the shared database.
pub(super) struct Shard {
    pub(super) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

pub(super) async fn start_shard(database_url: &str, id: u32, count: u32) -> Shard {
    start_index(shard_config(database_url, id, count)).await
}

/// Shard `id` of `count` on the shared database.
pub(super) fn shard_config(database_url: &str, id: u32, count: u32) -> cbir_index::Config {
    cbir_index::Config {
        database_url: database_url.to_string(),
        shard: cbir_common::shard::Shard { id, count },
        follow_ms: 200,
        ..Default::default()
    }
}

pub(super) async fn start_index(cfg: cbir_index::Config) -> Shard {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    start_index_on(cfg, l)
}

/// Three shards that name each other as `peers` (their addresses known
/// before any starts), shard i configured by `cfg(i)`.
pub(super) async fn start_peered_shards(cfg: impl Fn(u32) -> cbir_index::Config) -> Vec<Shard> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let peers: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| vec![format!("http://{}", l.local_addr().expect("addr"))])
        .collect();
    listeners
        .into_iter()
        .zip(0..)
        .map(|(l, id)| {
            start_index_on(
                cbir_index::Config {
                    peers: peers.clone(),
                    ..cfg(id)
                },
                l,
            )
        })
        .collect()
}

/// An index service on a listener bound before (shards that name each
/// other as peers know their addresses before any starts).
fn start_index_on(cfg: cbir_index::Config, l: tokio::net::TcpListener) -> Shard {
    let addr = l.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(cbir_index::serve(cfg, l, async move {
        let _ = stopped.await;
    }));
    Shard { addr, stop, task }
}

impl Shard {
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A second gateway on the system's inference service, over `shards`
/// (each a list of replica addresses).
pub(super) struct Gateway {
    pub(super) url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

pub(super) async fn start_gateway(sys: &System, shards: &[Vec<SocketAddr>]) -> Gateway {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let mut cfg = sys.gateway_cfg.clone();
    cfg.index_shards = shards
        .iter()
        .map(|s| s.iter().map(|a| format!("http://{a}")).collect())
        .collect();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(cbir_gateway::serve(cfg, l, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{url}/api/health")).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["status"] == "ok" {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sharded gateway did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Gateway { url, stop, task }
}

impl Gateway {
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub(super) async fn client(url: &str) -> SearchServiceClient<Channel> {
    SearchServiceClient::connect(url.to_string())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

pub(super) async fn add(url: &str, files: &[PathBuf]) -> Vec<pb::AddImageResult> {
    let images = files
        .iter()
        .map(|p| pb::NewImage {
            file_name: p.file_name().expect("name").to_string_lossy().into(),
            path: p.to_string_lossy().into(),
            label: p
                .parent()
                .and_then(|d| d.file_name())
                .expect("class")
                .to_string_lossy()
                .into(),
            data: std::fs::read(p).expect("read"),
        })
        .collect();
    let r = client(url)
        .await
        .add_images(pb::AddImagesRequest {
            collection: COLLECTION.into(),
            images,
            create_collection: true,
            ..Default::default()
        })
        .await
        .expect("add images")
        .into_inner();
    assert_eq!(r.failed, 0, "{r:?}");
    r.results
}

/// What a search shows, to compare: id, rank order, distance and score.
pub(super) type Ranked = Vec<(u64, f32, f32)>;

pub(super) async fn search(
    url: &str,
    query: pb::search_request::Query,
    mode: pb::SearchMode,
) -> Ranked {
    search_results(url, query, mode)
        .await
        .into_iter()
        .map(|h| (h.id, h.distance, h.score))
        .collect()
}

/// The top 10 of a search on the gateway at `url`, as it answers them.
pub(super) async fn search_results(
    url: &str,
    query: pb::search_request::Query,
    mode: pb::SearchMode,
) -> Vec<pb::SearchResult> {
    client(url)
        .await
        .search(pb::SearchRequest {
            query: Some(query),
            collection: COLLECTION.into(),
            top_k: 10,
            mode: mode as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{mode:?} search on {url}: {e}"))
        .into_inner()
        .results
}

pub(super) fn same(a: &Ranked, b: &Ranked) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-5)
}

/// One node's answers against a sharded gateway's, query by query: the
/// partition and exact answers identical; probe answers (the stopping rule
/// runs on each shard over its own partitions, so it visits at least as
/// many) together at least as close to the exact ones as one node's.
pub(super) fn compare(
    what: &str,
    one: &[(pb::SearchMode, Ranked)],
    sharded: &[(pb::SearchMode, Ranked)],
) {
    assert_eq!(one.len(), sharded.len());
    let found = |probe: &Ranked, exact: &Ranked| {
        probe
            .iter()
            .filter(|h| exact.iter().any(|e| e.0 == h.0))
            .count()
    };
    let (mut recall_one, mut recall_sharded) = (0, 0);
    for (q, (a, b)) in one.chunks(3).zip(sharded.chunks(3)).enumerate() {
        for i in [0, 2] {
            let mode = a[i].0;
            assert!(
                same(&a[i].1, &b[i].1),
                "{what}, query {q} {mode:?}: {:?} against {:?}",
                a[i].1,
                b[i].1
            );
            if mode == pb::SearchMode::Exact {
                assert_eq!(a[i].1.len(), 10, "exact ranks the whole collection");
            }
        }
        recall_one += found(&a[1].1, &a[2].1);
        recall_sharded += found(&b[1].1, &b[2].1);
    }
    eprintln!("{what}: probe found {recall_sharded} of the exact top 10s sharded, {recall_one} on one node");
    assert!(
        recall_sharded >= recall_one,
        "{what}: probe found {recall_sharded} of the exact top 10s sharded, {recall_one} on one node"
    );
}

/// Every mode's answer for every query, on the gateway at `url`.
pub(super) async fn answers(url: &str, queries: &[PathBuf]) -> Vec<(pb::SearchMode, Ranked)> {
    let mut out = Vec::new();
    for q in queries {
        let data = std::fs::read(q).expect("read");
        for mode in [
            pb::SearchMode::Partition,
            pb::SearchMode::Probe,
            pb::SearchMode::Exact,
        ] {
            let query = pb::search_request::Query::Image(data.clone());
            out.push((mode, search(url, query, mode).await));
        }
    }
    out
}

/// The collection's statistics on one index service (not through a gateway).
pub(super) async fn index_stats(addr: SocketAddr) -> pb::StatsResponse {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    IndexServiceClient::new(ch)
        .stats(pb::StatsRequest {
            collection: COLLECTION.into(),
        })
        .await
        .expect("stats")
        .into_inner()
}

/// The partitions an index service holds of the collection.
pub(super) async fn held_partitions(addr: SocketAddr) -> Vec<i32> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let s = IndexServiceClient::new(ch)
        .stats(pb::StatsRequest {
            collection: COLLECTION.into(),
        })
        .await
        .expect("stats")
        .into_inner();
    s.partitions
        .iter()
        .filter(|p| p.count > 0)
        .map(|p| p.class_index)
        .collect()
}
