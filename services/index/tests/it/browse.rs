//! Browsing a collection (issue 15, item 2) on both backends: complete,
//! ordered pages in every sort, stable under inserts and deletes between
//! pages and under concurrent writers, filters as SQL, refused cursors,
//! index use, label counts and which images keep a source.

use std::collections::{HashMap, HashSet};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_index::store::{ImageFilter, ListQuery, Sort, Store};
use tonic::transport::Channel;
use tonic::Code;

use crate::both_backends;
use crate::service::{create, unit, Server};

const DIMS: usize = 8;
const SORTS: [pb::ImageSort; 3] = [
    pb::ImageSort::Time,
    pb::ImageSort::Name,
    pb::ImageSort::Label,
];

/// Lowercase ASCII, digits and `-.` only: MySQL's collation orders them
/// as bytes do, so the test can sort them itself. Names and labels repeat,
/// so that ties fall to the id.
fn rec(seed: u64) -> pb::ImageRecord {
    let label = match seed % 9 {
        0 => String::new(),
        k => format!("l{k}"),
    };
    pb::ImageRecord {
        content_hash: format!("{seed:064x}"),
        file_name: format!("n{:03}.jpg", (seed * 7919) % 400),
        path: format!("/p{}/n{seed}.jpg", seed % 4),
        label,
        predicted_class: (seed % 5) as i32,
        feature: unit(seed, DIMS),
        thumbnail: vec![0xFF, 0xD8, seed as u8],
        source_image: if seed.is_multiple_of(2) {
            vec![1, 2, 3]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

async fn add(c: &mut IndexServiceClient<Channel>, seeds: impl Iterator<Item = u64>) -> Vec<u64> {
    let records: Vec<pb::ImageRecord> = seeds.map(rec).collect();
    let mut ids = Vec::new();
    for chunk in records.chunks(250) {
        let out = c
            .upsert(pb::UpsertRequest {
                collection: "c".into(),
                records: chunk.to_vec(),
                replace: false,
            })
            .await
            .expect("upsert")
            .into_inner();
        ids.extend(out.results.iter().map(|r| r.id));
    }
    ids
}

fn req(sort: pb::ImageSort, desc: bool, size: u32, cursor: &str) -> pb::ListImagesRequest {
    pb::ListImagesRequest {
        collection: "c".into(),
        sort: sort as i32,
        descending: desc,
        page_size: size,
        cursor: cursor.into(),
        ..Default::default()
    }
}

async fn page(
    c: &mut IndexServiceClient<Channel>,
    r: pb::ListImagesRequest,
) -> pb::ListImagesResponse {
    c.list_images(r).await.expect("list images").into_inner()
}

/// Every page of a listing, after `between` ran before each next page.
async fn all_pages<F, Fut>(
    c: &mut IndexServiceClient<Channel>,
    first: pb::ListImagesRequest,
    mut between: F,
) -> (Vec<pb::ImageRecord>, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut out = Vec::new();
    let mut r = first;
    let mut pages = 0;
    loop {
        let p = page(c, r.clone()).await;
        pages += 1;
        assert!(p.images.len() <= r.page_size as usize);
        out.extend(p.images);
        if p.next_cursor.is_empty() {
            return (out, pages);
        }
        assert!(pages < 10_000, "the cursor does not advance");
        between(pages).await;
        r.cursor = p.next_cursor;
    }
}

/// The key an image sorts by, comparable as a tuple.
fn key(sort: pb::ImageSort, i: &pb::ImageRecord) -> (i64, String, String, u64) {
    match sort {
        pb::ImageSort::Name => (0, i.file_name.clone(), String::new(), i.id),
        pb::ImageSort::Label => (0, i.label.clone(), i.file_name.clone(), i.id),
        _ => (i.created_at_ms, String::new(), String::new(), i.id),
    }
}

fn assert_ordered(sort: pb::ImageSort, desc: bool, images: &[pb::ImageRecord]) {
    for w in images.windows(2) {
        let (a, b) = (key(sort, &w[0]), key(sort, &w[1]));
        let ok = if desc { a > b } else { a < b };
        assert!(ok, "{sort:?} desc={desc}: {a:?} then {b:?}");
    }
}

async fn paging_in_every_order(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    // Several upserts: several creation times, many ties within each.
    let mut ids = Vec::new();
    for part in 0..4u64 {
        ids.extend(add(&mut c, part * 250..(part + 1) * 250).await);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let want: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(want.len(), 1000);
    for sort in SORTS {
        for desc in [false, true] {
            let (got, pages) = all_pages(&mut c, req(sort, desc, 37, ""), |_| async {}).await;
            assert_eq!(pages, 1000usize.div_ceil(37), "{sort:?} desc={desc}");
            let seen: Vec<u64> = got.iter().map(|i| i.id).collect();
            let unique: HashSet<u64> = seen.iter().copied().collect();
            assert_eq!(seen.len(), 1000, "{sort:?} desc={desc}: each id once");
            assert_eq!(unique, want, "{sort:?} desc={desc}: every id");
            assert_ordered(sort, desc, &got);
            // The order is the one the test computes from the stored keys.
            let mut sorted = got.clone();
            sorted.sort_by_key(|i| key(sort, i));
            if desc {
                sorted.reverse();
            }
            assert_eq!(
                sorted.iter().map(|i| i.id).collect::<Vec<_>>(),
                seen,
                "{sort:?} desc={desc}"
            );
        }
    }
    // Listing shows no features nor sources; totals count the collection.
    let p = page(&mut c, req(pb::ImageSort::Unspecified, false, 0, "")).await;
    assert_eq!(p.images.len(), 50, "page size 0 means 50");
    assert_eq!(p.total, 1000);
    assert!(p
        .images
        .iter()
        .all(|i| i.feature.is_empty() && i.source_image.is_empty() && i.thumbnail.is_empty()));
    let by_time = page(&mut c, req(pb::ImageSort::Time, false, 50, "")).await;
    assert_eq!(
        p.images.iter().map(|i| i.id).collect::<Vec<_>>(),
        by_time.images.iter().map(|i| i.id).collect::<Vec<_>>(),
        "the default order is time"
    );
    server.stop().await;
}
both_backends!(paging_is_complete_and_ordered, paging_in_every_order);

async fn inserts_and_deletes_between_pages(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    let ids = add(&mut c, 0..600).await;
    for sort in SORTS {
        for desc in [false, true] {
            let start: HashSet<u64> = {
                let (all, _) = all_pages(&mut c, req(sort, desc, 500, ""), |_| async {}).await;
                all.iter().map(|i| i.id).collect()
            };
            let deleted = std::sync::Arc::new(parking_lot::Mutex::new(HashSet::new()));
            let added = std::sync::Arc::new(parking_lot::Mutex::new(HashSet::new()));
            let writer = c.clone();
            let (d, a) = (deleted.clone(), added.clone());
            let round = (sort as u64) * 10 + u64::from(desc);
            let pool: Vec<u64> = start.iter().copied().collect();
            let (got, _) = all_pages(&mut c, req(sort, desc, 37, ""), move |n| {
                let mut w = writer.clone();
                let (d, a, pool) = (d.clone(), a.clone(), pool.clone());
                async move {
                    // Names and times land before and after the cursor.
                    let base = 100_000 + round * 1000 + n as u64 * 3;
                    let new = add(&mut w, base..base + 3).await;
                    a.lock().extend(new);
                    let victims: Vec<u64> = pool
                        .iter()
                        .copied()
                        .skip((n * 13) % pool.len())
                        .take(2)
                        .collect();
                    w.delete(pb::DeleteRequest {
                        collection: "c".into(),
                        ids: victims.clone(),
                    })
                    .await
                    .expect("delete");
                    d.lock().extend(victims);
                }
            })
            .await;
            let seen: Vec<u64> = got.iter().map(|i| i.id).collect();
            let unique: HashSet<u64> = seen.iter().copied().collect();
            assert_eq!(unique.len(), seen.len(), "{sort:?} desc={desc}: no repeat");
            let deleted = deleted.lock().clone();
            let added = added.lock().clone();
            for id in start.difference(&deleted) {
                assert!(unique.contains(id), "{sort:?} desc={desc}: {id} skipped");
            }
            for id in &unique {
                assert!(
                    start.contains(id) || added.contains(id),
                    "{sort:?} desc={desc}: {id} from nowhere"
                );
            }
            assert_ordered(sort, desc, &got);
        }
    }
    assert!(!ids.is_empty());
    server.stop().await;
}
both_backends!(
    pages_are_stable_under_inserts_and_deletes,
    inserts_and_deletes_between_pages
);

async fn filtered(
    c: &mut IndexServiceClient<Channel>,
    filter: pb::ImageFilter,
    sort: pb::ImageSort,
) -> (Vec<pb::ImageRecord>, u64) {
    let mut r = req(sort, false, 23, "");
    r.filter = Some(filter);
    let total = page(c, r.clone()).await.total;
    (all_pages(c, r, |_| async {}).await.0, total)
}

/// What a filter should admit, as the test computes it.
type Admits = Box<dyn Fn(&pb::ImageRecord) -> bool>;

async fn filters_as_sql(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    add(&mut c, 0..150).await;
    let t_split = cbir_common::time::now_ms() + 1;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    add(&mut c, 150..200).await;
    // Text that LIKE or a case-insensitive collation would match wrongly.
    let odd = |seed: u64, label: &str, path: &str| pb::ImageRecord {
        label: label.into(),
        path: path.into(),
        ..rec(seed)
    };
    c.upsert(pb::UpsertRequest {
        collection: "c".into(),
        records: vec![
            odd(900, "L1", "/P0/x.jpg"),
            odd(901, "l1 ", "/p0%/x.jpg"),
            odd(902, "Chat", "/p_/x.jpg"),
        ],
        replace: false,
    })
    .await
    .expect("upsert odd");
    let (all, _) = all_pages(
        &mut c,
        req(pb::ImageSort::Time, false, 500, ""),
        |_| async {},
    )
    .await;
    assert_eq!(all.len(), 203);
    let cases: Vec<(&str, pb::ImageFilter, Admits)> = vec![
        (
            "labels in",
            pb::ImageFilter {
                labels_in: vec!["l1".into(), "".into()],
                ..Default::default()
            },
            Box::new(|i| i.label == "l1" || i.label.is_empty()),
        ),
        (
            "labels not in",
            pb::ImageFilter {
                labels_not_in: vec!["l2".into(), "l3".into(), "chat".into()],
                ..Default::default()
            },
            Box::new(|i| !["l2", "l3", "chat"].contains(&i.label.as_str())),
        ),
        (
            "path prefix",
            pb::ImageFilter {
                path_prefix: "/p0".into(),
                ..Default::default()
            },
            Box::new(|i| i.path.starts_with("/p0")),
        ),
        (
            "path prefix with a LIKE wildcard",
            pb::ImageFilter {
                path_prefix: "/p_".into(),
                ..Default::default()
            },
            Box::new(|i| i.path.starts_with("/p_")),
        ),
        (
            "time range",
            pb::ImageFilter {
                created_from_ms: t_split,
                ..Default::default()
            },
            Box::new(move |i| i.created_at_ms >= t_split),
        ),
        (
            "before",
            pb::ImageFilter {
                created_to_ms: t_split,
                ..Default::default()
            },
            Box::new(move |i| i.created_at_ms < t_split),
        ),
        (
            "everything at once",
            pb::ImageFilter {
                labels_in: vec!["l1".into(), "l2".into(), "l4".into()],
                labels_not_in: vec!["l4".into()],
                path_prefix: "/p1/".into(),
                created_from_ms: 1,
                created_to_ms: t_split,
            },
            Box::new(move |i| {
                ["l1", "l2"].contains(&i.label.as_str())
                    && i.path.starts_with("/p1/")
                    && i.created_at_ms < t_split
            }),
        ),
    ];
    for (what, filter, admits) in cases {
        let want: Vec<u64> = all.iter().filter(|i| admits(i)).map(|i| i.id).collect();
        assert!(!want.is_empty(), "{what}: the test needs matches");
        assert!(want.len() < all.len(), "{what}: the test needs misses");
        for sort in SORTS {
            let (got, total) = filtered(&mut c, filter.clone(), sort).await;
            let mut got: Vec<u64> = got.iter().map(|i| i.id).collect();
            got.sort_unstable();
            let mut want = want.clone();
            want.sort_unstable();
            assert_eq!(got, want, "{what}, {sort:?}");
            assert_eq!(total, want.len() as u64, "{what}: total");
        }
    }
    server.stop().await;
}
both_backends!(filters_are_exact, filters_as_sql);

async fn refusals(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    add(&mut c, 0..10).await;
    let first = page(&mut c, req(pb::ImageSort::Name, false, 3, "")).await;
    assert!(!first.next_cursor.is_empty());
    let wrong = [
        req(pb::ImageSort::Time, false, 3, &first.next_cursor),
        req(pb::ImageSort::Name, true, 3, &first.next_cursor),
        req(pb::ImageSort::Name, false, 3, "not-a-cursor"),
        req(pb::ImageSort::Name, false, 3, &first.next_cursor[4..]),
        req(pb::ImageSort::Name, false, 501, ""),
        pb::ListImagesRequest {
            sort: 42,
            ..req(pb::ImageSort::Name, false, 3, "")
        },
        pb::ListImagesRequest {
            filter: Some(pb::ImageFilter {
                created_from_ms: 10,
                created_to_ms: 5,
                ..Default::default()
            }),
            ..req(pb::ImageSort::Name, false, 3, "")
        },
        pb::ListImagesRequest {
            filter: Some(pb::ImageFilter {
                labels_in: vec!["x".into(); 257],
                ..Default::default()
            }),
            ..req(pb::ImageSort::Name, false, 3, "")
        },
    ];
    for r in wrong {
        let s = c.list_images(r.clone()).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{r:?}: {s:?}");
        assert!(!s.message().is_empty());
    }
    let s = c
        .list_images(req(pb::ImageSort::Name, false, 3, &first.next_cursor))
        .await;
    assert!(s.is_ok(), "the right cursor still works");
    let s = c
        .list_images(pb::ListImagesRequest {
            collection: "nope".into(),
            ..req(pb::ImageSort::Name, false, 3, "")
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = c
        .list_images(req(pb::ImageSort::Time, false, 3, &first.next_cursor))
        .await
        .unwrap_err();
    assert!(
        s.message().contains("sort name ascending"),
        "names the cursor's order: {}",
        s.message()
    );
    server.stop().await;
}
both_backends!(bad_requests_are_refused, refusals);

/// Readers page through while writers upsert, delete and relabel other
/// images: every pass is ordered, repeats nothing and holds every image
/// no writer touches.
async fn reads_under_writes(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    let stable: HashSet<u64> = add(&mut c, 0..300).await.into_iter().collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let mut wc = c.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || round < 3 {
                let base = 10_000 + w * 100_000 + round * 10;
                let new = add(&mut wc, base..base + 10).await;
                wc.update_label(pb::UpdateLabelRequest {
                    collection: "c".into(),
                    id: new[0],
                    label: format!("w{w}"),
                })
                .await
                .expect("relabel");
                wc.delete(pb::DeleteRequest {
                    collection: "c".into(),
                    ids: new[..5].to_vec(),
                })
                .await
                .expect("delete");
                round += 1;
            }
            round
        }));
    }
    let mut readers = Vec::new();
    for (k, sort) in SORTS.into_iter().enumerate() {
        let mut rc = c.clone();
        let stable = stable.clone();
        readers.push(tokio::spawn(async move {
            for pass in 0..3 {
                let desc = (pass + k) % 2 == 1;
                let (got, _) = all_pages(&mut rc, req(sort, desc, 29, ""), |_| async {}).await;
                let mut times: HashMap<u64, Vec<&str>> = HashMap::new();
                for i in &got {
                    times.entry(i.id).or_default().push(&i.label);
                }
                for (id, labels) in &times {
                    // Only a relabel moves an image in label order, past
                    // the cursor: then it shows once under each label.
                    let moved = sort == pb::ImageSort::Label
                        && labels.len() == 2
                        && labels[1].starts_with('w');
                    assert!(labels.len() == 1 || moved, "{sort:?}: {id} repeated");
                }
                let unique: HashSet<u64> = times.keys().copied().collect();
                assert!(
                    stable.is_subset(&unique),
                    "{sort:?}: no untouched image skipped"
                );
                assert_ordered(sort, desc, &got);
            }
        }));
    }
    for r in readers {
        r.await.expect("reader");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut rounds = 0;
    for w in writers {
        rounds += w.await.expect("writer");
    }
    assert!(rounds >= 9, "the writers ran meanwhile");
    let end = page(&mut c, req(pb::ImageSort::Time, false, 1, "")).await;
    assert_eq!(end.total, 300 + rounds * 5, "what the writers left");
    server.stop().await;
}
both_backends!(paging_under_concurrent_writers, reads_under_writes);

async fn counts_sources_thumbnails(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    let ids = add(&mut c, 0..90).await;
    let stats = c
        .stats(pb::StatsRequest {
            collection: "c".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    let mut want: HashMap<String, u64> = HashMap::new();
    for s in 0..90 {
        *want.entry(rec(s).label).or_default() += 1;
    }
    let got: HashMap<String, u64> = stats
        .labels
        .iter()
        .map(|l| (l.label.clone(), l.count))
        .collect();
    assert_eq!(got, want);
    assert!(stats.labels.windows(2).all(|w| w[0].count >= w[1].count));
    c.update_label(pb::UpdateLabelRequest {
        collection: "c".into(),
        id: ids[1],
        label: "l5".into(),
    })
    .await
    .expect("relabel");
    let stats = c
        .stats(pb::StatsRequest {
            collection: "c".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        stats.labels[0].label, "l5",
        "most first: {:?}",
        stats.labels
    );
    assert_eq!(stats.labels[0].count, 11);

    let mut r = req(pb::ImageSort::Time, false, 90, "");
    r.include_thumbnail = true;
    let p = page(&mut c, r).await;
    for (i, img) in p.images.iter().enumerate() {
        let seed = ids.iter().position(|&x| x == img.id).expect("known id") as u64;
        assert_eq!(img.has_source, seed.is_multiple_of(2), "image {i}");
        assert_eq!(img.thumbnail, rec(seed).thumbnail);
    }
    for (seed, &id) in ids.iter().enumerate().take(4) {
        let g = c
            .get_image(pb::GetImageRequest {
                collection: "c".into(),
                id,
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner()
            .image
            .expect("image");
        assert_eq!(g.has_source, seed % 2 == 0);
        assert!(g.source_image.is_empty(), "not asked for");
    }
    server.stop().await;
}
both_backends!(
    label_counts_sources_and_thumbnails,
    counts_sources_thumbnails
);

/// A page of large thumbnails ends at the byte budget and goes on.
async fn big_thumbnails(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    create(&mut c, "c", DIMS as u32).await;
    let records: Vec<pb::ImageRecord> = (0..12)
        .map(|s| pb::ImageRecord {
            thumbnail: vec![s as u8; 700_000],
            ..rec(s)
        })
        .collect();
    for chunk in records.chunks(4) {
        c.upsert(pb::UpsertRequest {
            collection: "c".into(),
            records: chunk.to_vec(),
            replace: false,
        })
        .await
        .expect("upsert");
    }
    let mut r = req(pb::ImageSort::Name, false, 12, "");
    r.include_thumbnail = true;
    let mut seen = HashSet::new();
    let mut pages = 0;
    loop {
        let p = page(&mut c, r.clone()).await;
        pages += 1;
        let bytes: usize = p.images.iter().map(|i| i.thumbnail.len()).sum();
        assert!(bytes <= 4 << 20, "page of {bytes} bytes");
        assert!(!p.images.is_empty());
        seen.extend(p.images.iter().map(|i| i.id));
        if p.next_cursor.is_empty() {
            break;
        }
        r.cursor = p.next_cursor;
    }
    assert_eq!(seen.len(), 12);
    assert_eq!(pages, 3, "5 + 5 + 2 thumbnails of 700 kB");
    server.stop().await;
}
both_backends!(thumbnail_pages_are_bounded, big_thumbnails);

/// Each order reads an index: on SQLite without a sort step; on MariaDB
/// the time order without a filesort (name and label keys are longer than
/// its index keys may be: their pages sort what follows the cursor).
async fn plans(url: &str) {
    use cbir_index::store::browse::Cursor;
    use cbir_index::store::ListedImage;
    let store = Store::connect(url, 2).await.expect("connect");
    let coll = store
        .create_collection("c", "c", "m", "v", 4, "")
        .await
        .expect("create");
    let mysql = store.backend() == sea_orm::DbBackend::MySql;
    let last = ListedImage {
        id: 9,
        predicted_class: 1,
        content_hash: String::new(),
        file_name: "m.jpg".into(),
        path: String::new(),
        label: "b".into(),
        created_at_ms: 5,
        thumbnail: None,
        has_source: false,
    };
    for (sort, index) in [
        (Sort::Time, "idx_images_time"),
        (Sort::Name, "idx_images_name"),
        (Sort::Label, "idx_images_label"),
    ] {
        if mysql && sort != Sort::Time {
            continue;
        }
        for desc in [false, true] {
            for cursor in [None, Some(Cursor::after(sort, desc, &last))] {
                let q = ListQuery {
                    sort,
                    descending: desc,
                    page_size: 50,
                    cursor,
                    filter: ImageFilter::default(),
                    include_thumbnail: false,
                };
                let text = store
                    .explain_list(coll.id, &q)
                    .await
                    .expect("explain")
                    .join("\n");
                assert!(text.contains(index), "{sort:?} desc={desc}: {text}");
                assert!(!text.contains("TEMP B-TREE"), "{sort:?}: {text}");
                assert!(!text.contains("filesort"), "{sort:?}: {text}");
            }
        }
    }
}
both_backends!(listings_read_an_index, plans);
