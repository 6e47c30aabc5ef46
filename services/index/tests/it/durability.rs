//! The index service killed with SIGKILL in the middle of bulk upserts:
//! after a restart every acknowledged upsert is found, no batch is half
//! written, and counts are exact. Runs the real binary on both backends.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use tonic::transport::Channel;

use crate::both_backends;
use crate::service::{create, record};

const DIMS: usize = 64;
const BATCH: u64 = 50;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real `cbir-index` process on `url`.
pub fn spawn(url: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cbir-index"))
        .env("INDEX_DATABASE_URL", url)
        .env("INDEX_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cbir-index")
}

pub async fn connect(port: u16) -> IndexServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut c = IndexServiceClient::new(ch);
            if c.list_collections(pb::ListCollectionsRequest {})
                .await
                .is_ok()
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "cbir-index did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The content hashes the index holds in `collection` (from memory; at
/// most 10,000).
pub async fn held(
    c: &mut IndexServiceClient<Channel>,
    collection: &str,
    dims: usize,
) -> HashSet<String> {
    let r = c
        .search(pb::IndexSearchRequest {
            collection: collection.into(),
            vector: record(0, 0, dims).feature,
            predicted_class: -1,
            top_k: 10_000,
            mode: pb::SearchMode::Exact as i32,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    r.hits.into_iter().map(|h| h.content_hash).collect()
}

async fn killed_mid_bulk_upsert(url: &str) {
    let port = free_port();
    let mut child = spawn(url, port);
    let mut c = connect(port).await;
    create(&mut c, "bulk", DIMS as u32).await;

    // Writers upsert batches in a loop; the process dies under them.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let mut c = c.clone();
        let ack_tx = ack_tx.clone();
        writers.push(tokio::spawn(async move {
            for b in 0.. {
                let first = (w * 1_000_000) + b * BATCH;
                let recs = (first..first + BATCH)
                    .map(|s| record(s, (s % 11) as i32, DIMS))
                    .collect();
                match c
                    .upsert(pb::UpsertRequest {
                        replace: false,
                        collection: "bulk".into(),
                        records: recs,
                    })
                    .await
                {
                    Ok(_) => {
                        let _ = ack_tx.send(first);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    drop(ack_tx);
    // Let some batches through, then kill without warning.
    let mut acked: Vec<u64> = Vec::new();
    while acked.len() < 12 {
        acked.push(ack_rx.recv().await.expect("acks arrive"));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    for w in writers {
        let _ = w.await;
    }
    while let Ok(a) = ack_rx.try_recv() {
        acked.push(a);
    }

    let mut child = spawn(url, port);
    let mut c = connect(port).await;
    let stats = c
        .stats(pb::StatsRequest {
            collection: "bulk".into(),
        })
        .await
        .expect("stats after restart")
        .into_inner();
    // Every acknowledged batch is there, whole.
    let mut found_batches: HashSet<u64> = HashSet::new();
    let hashes = held(&mut c, "bulk", DIMS).await;
    assert_eq!(
        hashes.len() as u64,
        stats.count,
        "memory and database agree"
    );
    for first in &acked {
        for s in *first..*first + BATCH {
            assert!(
                hashes.contains(&format!("{s:064x}")),
                "acknowledged image {s} is missing after SIGKILL"
            );
        }
        found_batches.insert(*first);
    }
    // Anything else present is a whole batch that committed but whose
    // acknowledgement was lost with the process: never part of one.
    let mut by_batch: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for h in &hashes {
        let s = u64::from_str_radix(h, 16).expect("hex");
        *by_batch.entry(s - s % BATCH).or_default() += 1;
    }
    for (first, n) in &by_batch {
        assert_eq!(*n, BATCH, "batch {first} is half written ({n} of {BATCH})");
    }
    assert_eq!(stats.count, by_batch.len() as u64 * BATCH);
    assert!(stats.count >= acked.len() as u64 * BATCH);
    println!(
        "acknowledged {} batches, found {} after SIGKILL and restart",
        acked.len(),
        by_batch.len()
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
}
both_backends!(sigkill_mid_bulk_upsert, killed_mid_bulk_upsert);
