//! MariaDB killed (SIGKILL) and started again on the same port while the
//! index service takes concurrent bulk upserts and searches. During the
//! outage writes fail with UNAVAILABLE and change nothing, searches go on
//! from memory; afterwards the pool reconnects by itself, and after a
//! restart of the index every acknowledged image is there, exactly once.
//!
//! A private MariaDB server (`crate::mariadb`), so that the shared server
//! other tests use is never disturbed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use sea_orm::{ConnectionTrait, Database};

use crate::durability::{connect, free_port, held, spawn};
use crate::mariadb::Mariadb;
use crate::service::{create, record};

const DIMS: usize = 32;
const BATCH: u64 = 20;

fn seeds_of(first: u64) -> impl Iterator<Item = String> {
    (first..first + BATCH).map(|s| format!("{s:064x}"))
}

#[derive(Default)]
struct Outcomes {
    acked: Vec<u64>,
    /// Batches whose upsert failed: not stored, or stored with the answer
    /// lost when the connection died.
    failed: Vec<u64>,
    codes: HashMap<String, usize>,
    messages: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_killed_and_restarted_under_load() {
    let mut db = Mariadb::new();
    db.start().await;
    Database::connect(db.url("mysql"))
        .await
        .expect("connect")
        .execute_unprepared("CREATE DATABASE cbir")
        .await
        .expect("create database");
    let url = db.url("cbir");
    let port = free_port();
    let mut index = spawn(&url, port);
    let mut c = connect(port).await;
    create(&mut c, "bulk", DIMS as u32).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(parking_lot::Mutex::new(Outcomes::default()));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (mut c, stop, acks, outcomes) =
            (c.clone(), stop.clone(), acks.clone(), outcomes.clone());
        writers.push(tokio::spawn(async move {
            let mut b = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let first = w * 1_000_000 + b * BATCH;
                b += 1;
                let recs = (first..first + BATCH)
                    .map(|s| record(s, (s % 7) as i32, DIMS))
                    .collect();
                let mut req = tonic::Request::new(pb::UpsertRequest {
                    replace: false,
                    collection: "bulk".into(),
                    records: recs,
                });
                req.set_timeout(Duration::from_secs(60));
                match c.upsert(req).await {
                    Ok(_) => {
                        outcomes.lock().acked.push(first);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(s) => {
                        {
                            let mut o = outcomes.lock();
                            o.failed.push(first);
                            *o.codes.entry(format!("{:?}", s.code())).or_default() += 1;
                            o.messages.push(s.message().to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    let searches_ok = Arc::new(AtomicU64::new(0));
    let searches_failed = Arc::new(AtomicU64::new(0));
    let searcher = {
        let (mut c, stop, ok, failed) = (
            c.clone(),
            stop.clone(),
            searches_ok.clone(),
            searches_failed.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r = c
                    .search(pb::IndexSearchRequest {
                        collection: "bulk".into(),
                        vector: record(i, (i % 7) as i32, DIMS).feature,
                        predicted_class: (i % 7) as i32,
                        top_k: 10,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let wait_acks = |n: u64, what: &'static str| {
        let acks = acks.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while acks.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "{what}: no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acks(15, "before the outage").await;
    db.kill();
    let killed_at = acks.load(Ordering::SeqCst);
    let searches_before = searches_ok.load(Ordering::SeqCst);
    // Down for 3 s, and on a loaded machine (the whole suite in parallel)
    // until a writer has seen the outage, up to 30 s: a write waiting for
    // a pooled connection only fails when its wait runs out.
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    while outcomes.lock().failed.is_empty() && down.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = acks.load(Ordering::SeqCst) - killed_at;
    let searches_during = searches_ok.load(Ordering::SeqCst) - searches_before;
    db.start().await;
    let restarted = Instant::now();
    let back_from = acks.load(Ordering::SeqCst);
    wait_acks(back_from + 1, "after MariaDB came back").await;
    let recovery = restarted.elapsed();
    wait_acks(back_from + 15, "after MariaDB came back").await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    searcher.await.expect("searcher");

    let o = std::mem::take(&mut *outcomes.lock());
    // At most the batches in flight at the kill were answered after it.
    assert!(
        during <= 3,
        "{during} upserts acknowledged with the database down"
    );
    assert!(!o.failed.is_empty(), "the outage was not noticed");
    for m in &o.messages {
        assert!(
            m.contains("database"),
            "a failed write says what failed: {m}"
        );
    }
    assert!(
        o.codes.keys().all(|k| k == "Unavailable"),
        "failed writes are UNAVAILABLE (retryable): {:?}",
        o.codes
    );
    assert!(
        searches_during > 0,
        "searches are answered from memory while the database is down"
    );
    assert_eq!(
        searches_failed.load(Ordering::SeqCst),
        0,
        "no search failed"
    );

    // Memory of the running index: every acknowledged batch, whole.
    let live = held(&mut c, "bulk", DIMS).await;
    for first in &o.acked {
        for h in seeds_of(*first) {
            assert!(live.contains(&h), "acknowledged {h} missing from memory");
        }
    }
    // The database after a restart of the index.
    index.kill().expect("kill index");
    index.wait().expect("reap index");
    let mut index = spawn(&url, port);
    let mut c = connect(port).await;
    let stored = held(&mut c, "bulk", DIMS).await;
    let stats = c
        .stats(pb::StatsRequest {
            collection: "bulk".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, stored.len() as u64, "no duplicates");
    for first in &o.acked {
        for h in seeds_of(*first) {
            assert!(stored.contains(&h), "acknowledged {h} lost in the database");
        }
    }
    // What memory held was stored; anything stored beyond it is a failed
    // batch that committed as its connection died, and whole.
    assert!(live.is_subset(&stored), "memory held unstored images");
    let failed: HashSet<u64> = o.failed.iter().copied().collect();
    let mut by_batch: HashMap<u64, u64> = HashMap::new();
    for h in stored.difference(&live) {
        let s = u64::from_str_radix(h, 16).expect("hex");
        *by_batch.entry(s - s % BATCH).or_default() += 1;
    }
    for (first, n) in &by_batch {
        assert!(
            failed.contains(first),
            "batch {first} appeared from nowhere"
        );
        assert_eq!(*n, BATCH, "batch {first} half written");
    }
    println!(
        "acknowledged {} batches, {} failed during the outage ({:?}); reconnected {:.2} s after \
         MariaDB was back; {} searches answered during the outage; stored {} images",
        o.acked.len(),
        o.failed.len(),
        o.codes,
        recovery.as_secs_f64(),
        searches_during,
        stored.len()
    );
    index.kill().expect("kill index");
    index.wait().expect("reap index");
}
