//! Filtered search, result paging and SearchBatch (issue 15, items 3 and
//! 4) through a real index service on SQLite and on MariaDB: random
//! filters over labels, path prefixes and creation times return exactly
//! min(k, matching) hits in every mode, and in exact mode the ids of an
//! unfiltered exact search filtered afterwards, in the same order.

use std::collections::HashMap;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::both_backends;
use crate::service::{create, unit, Server};

const DIMS: usize = 24;
const IMAGES: u64 = 2000;
const CLASSES: u64 = 8;
const BATCHES: u64 = 4;
const LABELS: [&str; 5] = ["cat", "dog", "bird", "fish", ""];
/// Images labelled "rare": a filter on it matches 3 of 2000.
const RARE: [u64; 3] = [17, 1033, 1999];

/// What a filter looks at, as the database holds it.
#[derive(Debug, Clone)]
struct Facts {
    label: String,
    path: String,
    created_at_ms: i64,
    class: i32,
}

fn image(seed: u64) -> pb::ImageRecord {
    let label = if RARE.contains(&seed) {
        "rare".to_string()
    } else {
        LABELS[(seed % LABELS.len() as u64) as usize].to_string()
    };
    pb::ImageRecord {
        content_hash: format!("{seed:064x}"),
        file_name: format!("img{seed}.jpg"),
        path: format!("dir{}/sub{}/img{seed}.jpg", seed % 4, seed % 3),
        label,
        predicted_class: (seed % CLASSES) as i32,
        feature: unit(seed, DIMS),
        thumbnail: vec![0xFF, 0xD8, 0xFF],
        ..Default::default()
    }
}

fn admits(f: &pb::ImageFilter, x: &Facts) -> bool {
    (f.labels_in.is_empty() || f.labels_in.contains(&x.label))
        && !f.labels_not_in.contains(&x.label)
        && x.path.starts_with(&f.path_prefix)
        && (f.created_from_ms == 0 || x.created_at_ms >= f.created_from_ms)
        && (f.created_to_ms == 0 || x.created_at_ms < f.created_to_ms)
}

fn request(v: Vec<f32>, class: i32, k: u32, mode: pb::SearchMode) -> pb::IndexSearchRequest {
    pb::IndexSearchRequest {
        collection: "f".into(),
        vector: v,
        predicted_class: class,
        top_k: k,
        mode: mode as i32,
        ..Default::default()
    }
}

async fn search(
    c: &mut IndexServiceClient<Channel>,
    r: pb::IndexSearchRequest,
) -> pb::IndexSearchResponse {
    c.search(r)
        .await
        .unwrap_or_else(|s| panic!("search: {s:?}"))
        .into_inner()
}

fn ids(r: &pb::IndexSearchResponse) -> Vec<u64> {
    r.hits.iter().map(|h| h.id).collect()
}

/// Upserts the images in a few batches some milliseconds apart, so that
/// creation times differ; returns what the database holds of each id.
async fn fill(c: &mut IndexServiceClient<Channel>, url: &str) -> HashMap<u64, Facts> {
    create(c, "f", DIMS as u32).await;
    let per = IMAGES / BATCHES;
    for b in 0..BATCHES {
        c.upsert(pb::UpsertRequest {
            collection: "f".into(),
            records: (b * per..(b + 1) * per).map(image).collect(),
            replace: false,
        })
        .await
        .expect("upsert");
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
    let store = cbir_index::Store::connect(url, 2).await.expect("store");
    let coll = store.aliases().await.expect("aliases")["f"];
    store
        .load_page(coll, 0, IMAGES * 2)
        .await
        .expect("page")
        .into_iter()
        .map(|i| {
            (
                i.id,
                Facts {
                    label: i.label,
                    path: i.path,
                    created_at_ms: i.created_at_ms,
                    class: i.predicted_class,
                },
            )
        })
        .collect()
}

fn random_filter(rng: &mut StdRng, times: &[i64]) -> pb::ImageFilter {
    let mut f = pb::ImageFilter::default();
    let pick = |rng: &mut StdRng| LABELS[rng.random_range(0..LABELS.len())].to_string();
    match rng.random_range(0..6) {
        0 => f.labels_in = (0..rng.random_range(1..3)).map(|_| pick(rng)).collect(),
        1 => f.labels_not_in = (0..rng.random_range(1..4)).map(|_| pick(rng)).collect(),
        2 => {
            f.path_prefix = format!(
                "dir{}/sub{}/",
                rng.random_range(0..4),
                rng.random_range(0..3)
            )
        }
        3 => {
            let a = times[rng.random_range(0..times.len())];
            let b = times[rng.random_range(0..times.len())];
            (f.created_from_ms, f.created_to_ms) = (a.min(b), a.max(b) + 1);
        }
        4 => f.created_from_ms = times[rng.random_range(0..times.len())],
        _ => {
            f.labels_in = vec![pick(rng)];
            f.path_prefix = format!("dir{}/", rng.random_range(0..4));
            f.created_to_ms = times[rng.random_range(0..times.len())] + 1;
        }
    }
    f
}

async fn filters(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    let facts = fill(&mut c, url).await;
    assert_eq!(facts.len(), IMAGES as usize);
    let mut times: Vec<i64> = facts.values().map(|x| x.created_at_ms).collect();
    times.sort_unstable();
    times.dedup();
    assert!(times.len() >= 2, "the batches got distinct creation times");
    let mut rng = StdRng::seed_from_u64(15);
    let mut nonempty = 0;
    for t in 0..40 {
        let seed = rng.random_range(0..IMAGES * 3);
        let class = (seed % CLASSES) as i32;
        let v = unit(seed, DIMS);
        let f = random_filter(&mut rng, &times);
        let k = [1, 5, 10, 50][t % 4];
        let all = search(
            &mut c,
            request(v.clone(), class, IMAGES as u32, pb::SearchMode::Exact),
        )
        .await;
        assert_eq!(all.hits.len(), IMAGES as usize);
        let matching: Vec<u64> = all
            .hits
            .iter()
            .map(|h| h.id)
            .filter(|id| admits(&f, &facts[id]))
            .collect();
        nonempty += usize::from(!matching.is_empty());
        let want: Vec<u64> = matching.iter().copied().take(k as usize).collect();
        let mut r = request(v.clone(), class, k, pb::SearchMode::Exact);
        r.filter = Some(f.clone());
        let exact = search(&mut c, r.clone()).await;
        assert_eq!(ids(&exact), want, "exact, query {t}, filter {f:?}");
        assert_eq!(
            exact.has_more,
            matching.len() > k as usize,
            "has_more, query {t}"
        );
        for h in &exact.hits {
            assert_eq!(h.created_at_ms, facts[&h.id].created_at_ms);
            assert_eq!(h.label, facts[&h.id].label);
        }
        r.mode = pb::SearchMode::Probe as i32;
        let probe = search(&mut c, r.clone()).await;
        assert_eq!(
            probe.hits.len(),
            matching.len().min(k as usize),
            "probe, query {t}, filter {f:?}"
        );
        assert!(probe.hits.iter().all(|h| admits(&f, &facts[&h.id])));
        r.mode = pb::SearchMode::Partition as i32;
        let part = search(&mut c, r).await;
        let in_part = matching
            .iter()
            .filter(|id| facts[id].class == class)
            .count();
        assert_eq!(
            part.hits.len(),
            in_part.min(k as usize),
            "partition, query {t}, filter {f:?}"
        );
        assert!(part
            .hits
            .iter()
            .all(|h| admits(&f, &facts[&h.id]) && h.partition == class));
    }
    assert!(
        nonempty >= 30,
        "most random filters match something ({nonempty} of 40)"
    );
    rare(&mut c).await;
    paging(&mut c).await;
    refusals(&mut c).await;
    batch(&mut c).await;
    // A restarted service loads creation times from the database.
    server.stop().await;
    let again = Server::start(url).await;
    let mut c = again.client.clone();
    let (from, to) = (times[0], times[times.len() / 2]);
    let mut r = request(unit(7, DIMS), 7, IMAGES as u32, pb::SearchMode::Probe);
    r.filter = Some(pb::ImageFilter {
        created_from_ms: from,
        created_to_ms: to,
        ..Default::default()
    });
    let got = search(&mut c, r).await;
    let want = facts
        .values()
        .filter(|x| x.created_at_ms >= from && x.created_at_ms < to)
        .count();
    assert_eq!(got.hits.len(), want, "after a restart");
    again.stop().await;
}
both_backends!(filtered_search_returns_exactly_the_k_best_matching, filters);

/// A filter matching 3 of 2000 images finds all 3 in every mode that
/// reads their partitions (a post-filter of the top k would find none).
async fn rare(c: &mut IndexServiceClient<Channel>) {
    let f = pb::ImageFilter {
        labels_in: vec!["rare".into()],
        ..Default::default()
    };
    for mode in [pb::SearchMode::Exact, pb::SearchMode::Probe] {
        let mut r = request(unit(5, DIMS), 5, 10, mode);
        r.filter = Some(f.clone());
        let got = search(c, r).await;
        let mut found = ids(&got);
        found.sort_unstable();
        assert_eq!(found.len(), 3, "{mode:?}");
        assert!(got.hits.iter().all(|h| h.label == "rare"));
        assert!(!got.has_more);
    }
}

/// Pages of 10 concatenated are one search of 50; `has_more` says when
/// another page follows.
async fn paging(c: &mut IndexServiceClient<Channel>) {
    let f = pb::ImageFilter {
        labels_not_in: vec!["cat".into()],
        ..Default::default()
    };
    let mut one = request(unit(99, DIMS), 3, 50, pb::SearchMode::Exact);
    one.filter = Some(f.clone());
    let whole = search(c, one.clone()).await;
    assert_eq!(whole.hits.len(), 50);
    let mut pages = Vec::new();
    for p in 0..5 {
        let mut r = one.clone();
        r.top_k = 10;
        r.offset = p * 10;
        let page = search(c, r).await;
        assert!(page.has_more, "page {p}");
        pages.extend(ids(&page));
    }
    assert_eq!(pages, ids(&whole));
    // Past the end: nothing, and nothing more.
    let mut r = one.clone();
    r.filter = Some(pb::ImageFilter {
        labels_in: vec!["rare".into()],
        ..Default::default()
    });
    r.top_k = 2;
    let first = search(c, r.clone()).await;
    assert!(first.has_more);
    r.offset = 2;
    let second = search(c, r.clone()).await;
    assert_eq!(second.hits.len(), 1);
    assert!(!second.has_more);
    r.offset = 3;
    assert!(search(c, r).await.hits.is_empty());
}

async fn refusals(c: &mut IndexServiceClient<Channel>) {
    let max = cbir_index::Limits::default().max_top_k as u32;
    let cases = [
        (
            pb::ImageFilter::default(),
            max - 5,
            10,
            "offset + top_k must be at most",
        ),
        (
            pb::ImageFilter {
                labels_in: (0..101).map(|i| format!("l{i}")).collect(),
                ..Default::default()
            },
            0,
            10,
            "filter.labels_in holds 101 labels",
        ),
        (
            pb::ImageFilter {
                labels_not_in: vec!["x".repeat(513)],
                ..Default::default()
            },
            0,
            10,
            "filter.labels_not_in holds a label of 513 bytes",
        ),
        (
            pb::ImageFilter {
                created_from_ms: 20,
                created_to_ms: 10,
                ..Default::default()
            },
            0,
            10,
            "filter.created_from_ms (20) is after filter.created_to_ms (10)",
        ),
        (
            pb::ImageFilter {
                created_from_ms: -1,
                ..Default::default()
            },
            0,
            10,
            "Unix milliseconds",
        ),
    ];
    for (f, offset, k, says) in cases {
        let mut r = request(unit(1, DIMS), 1, k, pb::SearchMode::Exact);
        r.filter = Some(f);
        r.offset = offset;
        let e = c.search(r).await.expect_err(says);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{says}");
        assert!(
            e.message().contains(says),
            "{:?} lacks {says:?}",
            e.message()
        );
    }
}

/// Each query of a batch is answered on its own: a bad one fails alone,
/// the others answer as single searches do; an oversized batch is refused.
async fn batch(c: &mut IndexServiceClient<Channel>) {
    let mut good = request(unit(3, DIMS), 3, 7, pb::SearchMode::Exact);
    good.filter = Some(pb::ImageFilter {
        labels_in: vec!["dog".into()],
        ..Default::default()
    });
    let mut bad_dims = request(vec![1.0; DIMS + 1], 3, 7, pb::SearchMode::Exact);
    bad_dims.offset = 1;
    let mut unknown = good.clone();
    unknown.collection = "missing".into();
    let other = request(unit(4, DIMS), 4, 3, pb::SearchMode::Probe);
    let queries = vec![good.clone(), bad_dims, unknown, other.clone()];
    let items = c
        .search_batch(pb::IndexSearchBatchRequest { queries })
        .await
        .expect("batch")
        .into_inner()
        .items;
    assert_eq!(items.len(), 4);
    let single = search(c, good).await;
    assert_eq!(
        ids(items[0].response.as_ref().expect("answered")),
        ids(&single)
    );
    assert!(items[0].error.is_none());
    let e = items[1]
        .error
        .as_ref()
        .expect("dimension mismatch fails its item");
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(e.message.contains("dimensions"), "{}", e.message);
    assert_eq!(
        items[2].error.as_ref().map(|e| e.code),
        Some(tonic::Code::NotFound as i32)
    );
    assert_eq!(
        ids(items[3].response.as_ref().expect("answered")),
        ids(&search(c, other.clone()).await)
    );
    let max = cbir_index::Limits::default().max_batch_queries;
    let e = c
        .search_batch(pb::IndexSearchBatchRequest {
            queries: vec![other; max + 1],
        })
        .await
        .expect_err("over the limit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("max_batch_queries"), "{}", e.message());
}
