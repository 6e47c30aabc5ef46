//! `cbir eval`: retrieval quality of a labeled folder-per-class set,
//! measured through the gateway exactly as users search.
//!
//! Each query is searched twice: once for the first `max(100, K)` results
//! (precision@K, AP@100 and the share of vectors read: what an interactive
//! search costs), once for as many results as the collection holds (AP over
//! the whole ranking: a mode that skips partitions is charged for the
//! relevant images it never returns).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use cbir_api::v1 as pb;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::{
    add_files, collect_images, connect, label_of, status_error, AddSummary, Client,
};

/// Searches in flight: the gateway, inference and index share two cores.
const CONCURRENCY: usize = 4;
/// The longest ranking asked for (the gateway's default max_top_k).
const MAX_RANKING: u32 = 10_000;

pub struct EvalArgs {
    pub gateway: String,
    pub dir: PathBuf,
    pub queries: Option<PathBuf>,
    pub ks: Vec<usize>,
    pub modes: Vec<String>,
    pub collection: Option<String>,
    pub keep: bool,
    pub json: bool,
}

/// Precision at each k, AP@100 and AP over the ranking of one query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryScore {
    pub precision: Vec<f64>,
    pub ap100: f64,
    pub ap: f64,
}

/// `top`: relevance of the first results in order; `full`: relevance of the
/// whole returned ranking; `relevant`: how many relevant images exist.
pub fn score(top: &[bool], full: &[bool], relevant: usize, ks: &[usize]) -> QueryScore {
    let precision = ks
        .iter()
        .map(|&k| top.iter().take(k).filter(|&&r| r).count() as f64 / k as f64)
        .collect();
    let ap_at = |ranking: &[bool], cut: usize, denom: usize| -> f64 {
        if denom == 0 {
            return 0.0;
        }
        let mut hits = 0usize;
        let mut sum = 0.0;
        for (i, &rel) in ranking.iter().take(cut).enumerate() {
            if rel {
                hits += 1;
                sum += hits as f64 / (i + 1) as f64;
            }
        }
        sum / denom as f64
    };
    QueryScore {
        precision,
        ap100: ap_at(top, 100, relevant.min(100)),
        ap: ap_at(full, usize::MAX, relevant),
    }
}

#[derive(Default, Clone)]
struct Acc {
    n: usize,
    precision: Vec<f64>,
    ap100: f64,
    ap: f64,
}

impl Acc {
    fn add(&mut self, s: &QueryScore) {
        if self.precision.is_empty() {
            self.precision = vec![0.0; s.precision.len()];
        }
        self.n += 1;
        for (a, p) in self.precision.iter_mut().zip(&s.precision) {
            *a += p;
        }
        self.ap100 += s.ap100;
        self.ap += s.ap;
    }

    fn json(&self, ks: &[usize]) -> serde_json::Map<String, Value> {
        let n = self.n.max(1) as f64;
        let mut m = serde_json::Map::new();
        for (k, p) in ks.iter().zip(&self.precision) {
            m.insert(format!("P@{k}"), json!(p / n));
        }
        m.insert("mAP".into(), json!(self.ap / n));
        m.insert("mAP@100".into(), json!(self.ap100 / n));
        m.insert("queries".into(), json!(self.n));
        m
    }
}

enum Query {
    Stored { id: u64, label: String },
    Image { path: PathBuf, label: String },
}

/// The evaluated set as the index stored it.
struct Indexed {
    added: AddSummary,
    /// Label of each stored image (identical files are one entry; its label
    /// is the first file's).
    label_of_id: HashMap<u64, String>,
    class_size: HashMap<String, usize>,
}

impl Indexed {
    fn stored(&self) -> usize {
        self.label_of_id.len()
    }
}

/// What the two searches of one query found.
struct Outcome {
    label: String,
    self_excluded: bool,
    /// Relevance of each rank: whole rankings of every query would not fit
    /// in memory.
    top: Vec<bool>,
    full: Vec<bool>,
    vectors_scanned: u64,
    vectors_total: u64,
    took: f64,
}

pub async fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.gateway).await?;
    let collection = args
        .collection
        .clone()
        .unwrap_or_else(|| format!("eval-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut ks = args.ks.clone();
    ks.sort_unstable();
    ks.dedup();
    if ks.is_empty() || ks[0] == 0 {
        anyhow::bail!("-k takes positive cut-offs, e.g. -k 1,5,10");
    }
    let modes: Vec<pb::SearchMode> = args
        .modes
        .iter()
        .map(|m| cbir_gateway::search::parse_mode(m).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<_>>()?;
    let set = index_set(&client, &collection, &args).await?;
    // Refined ranking is measured on a collection at rest: every augmented
    // vector computed from the whole set, as the upkeep leaves it.
    if modes
        .iter()
        .any(|m| matches!(m, pb::SearchMode::Refined | pb::SearchMode::Unspecified))
    {
        refine(&client, &collection, !args.json).await?;
    }
    let queries = queries(&args, &set.label_of_id)?;
    let top_n = ks.iter().copied().max().unwrap_or(10).max(100) as u32;
    for mode in &modes {
        let started = Instant::now();
        let results = futures::stream::iter(
            queries
                .iter()
                .map(|q| search_one(client.clone(), &collection, q, *mode, top_n, set.stored())),
        )
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let wall = started.elapsed().as_secs_f64();
        let (mut report, per_class) = score_all(results, &set, &ks, wall)?;
        report.insert(
            "mode".into(),
            json!(cbir_gateway::search::mode_name(*mode as i32)),
        );
        report.insert("collection".into(), json!(collection));
        report.insert("leave_one_out".into(), json!(args.queries.is_none()));
        if args.json {
            println!("{}", Value::Object(report));
        } else {
            print_report(&report, &ks, &per_class);
        }
    }
    if !args.keep {
        let mut c = client.clone();
        c.delete_collection(pb::DeleteCollectionRequest {
            name: collection.clone(),
        })
        .await
        .map_err(|s| status_error("deleting the evaluation collection", s))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Recomputes the collection's augmented vectors and waits for the end.
async fn refine(client: &Client, collection: &str, show: bool) -> anyhow::Result<()> {
    let mut c = client.clone();
    let started = Instant::now();
    let id = c
        .refine_collection(pb::RefineCollectionRequest {
            collection: collection.to_string(),
        })
        .await
        .map_err(|s| status_error("refreshing the augmented vectors", s))?
        .into_inner()
        .operation_id;
    let mut s = c
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.clone(),
        })
        .await
        .map_err(|s| status_error("watching the refresh", s))?
        .into_inner();
    let mut last = None;
    while let Some(p) = s
        .message()
        .await
        .map_err(|s| status_error("watching the refresh", s))?
    {
        last = Some(p);
    }
    let p = last.ok_or_else(|| anyhow::anyhow!("the refresh {id} reported nothing"))?;
    if p.state != pb::operation_progress::State::Succeeded as i32 {
        anyhow::bail!("the refresh of {collection} did not succeed: {}", p.message);
    }
    if show {
        eprintln!(
            "refreshed {} augmented vectors in {:.1} s",
            p.done,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Indexes the images of DIR into `collection`.
async fn index_set(client: &Client, collection: &str, args: &EvalArgs) -> anyhow::Result<Indexed> {
    let files = collect_images(std::slice::from_ref(&args.dir))?;
    if files.is_empty() {
        anyhow::bail!("no images under {}", args.dir.display());
    }
    if !args.json {
        eprintln!(
            "indexing {} images of {} into collection {collection}",
            files.len(),
            args.dir.display()
        );
    }
    let added = add_files(client, collection, &files, !args.json).await?;
    for (p, r) in added.failed.iter().take(10) {
        eprintln!("  skipped {p}: {r}");
    }
    let mut label_of_id: HashMap<u64, String> = HashMap::new();
    for (p, id) in &added.ids {
        label_of_id.entry(*id).or_insert_with(|| label_of(p));
    }
    let mut class_size: HashMap<String, usize> = HashMap::new();
    for l in label_of_id.values() {
        *class_size.entry(l.clone()).or_default() += 1;
    }
    Ok(Indexed {
        added,
        label_of_id,
        class_size,
    })
}

/// The stored images themselves (leave-one-out), or the images of
/// --queries.
fn queries(args: &EvalArgs, label_of_id: &HashMap<u64, String>) -> anyhow::Result<Vec<Query>> {
    Ok(match &args.queries {
        None => {
            let mut ids: Vec<(&u64, &String)> = label_of_id.iter().collect();
            ids.sort();
            ids.into_iter()
                .map(|(id, l)| Query::Stored {
                    id: *id,
                    label: l.clone(),
                })
                .collect()
        }
        Some(qdir) => collect_images(std::slice::from_ref(qdir))?
            .into_iter()
            .map(|p| Query::Image {
                label: label_of(&p),
                path: p,
            })
            .collect(),
    })
}

/// Searches `q` for the first `top_n` results, then for the whole ranking.
async fn search_one(
    mut client: Client,
    collection: &str,
    q: &Query,
    mode: pb::SearchMode,
    top_n: u32,
    stored: usize,
) -> anyhow::Result<Outcome> {
    let (query, label, self_excluded) = match q {
        Query::Stored { id, label } => (
            pb::search_request::Query::Stored(pb::StoredImageQuery {
                collection: String::new(),
                id: *id,
                exclude_self: true,
            }),
            label,
            true,
        ),
        Query::Image { path, label } => (
            pb::search_request::Query::Image(
                tokio::fs::read(path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?,
            ),
            label,
            false,
        ),
    };
    let ask = |k: u32| pb::SearchRequest {
        query: Some(query.clone()),
        collection: collection.to_string(),
        top_k: k,
        min_similarity: 0.0,
        mode: mode as i32,
        ..Default::default()
    };
    let t0 = Instant::now();
    let top = client
        .search(ask(top_n))
        .await
        .map_err(|s| status_error("search", s))?
        .into_inner();
    let took = t0.elapsed().as_secs_f64();
    let full = client
        .search(ask(u32::try_from(stored)
            .unwrap_or(u32::MAX)
            .min(MAX_RANKING)))
        .await
        .map_err(|s| status_error("search", s))?
        .into_inner();
    let rel =
        |res: &[pb::SearchResult]| -> Vec<bool> { res.iter().map(|h| &h.label == label).collect() };
    let stats = top.stats.unwrap_or_default();
    Ok(Outcome {
        label: label.clone(),
        self_excluded,
        top: rel(&top.results),
        full: rel(&full.results),
        vectors_scanned: stats.vectors_scanned,
        vectors_total: stats.vectors_total,
        took,
    })
}

/// Scores of one mode's searches (`wall` seconds for all of them), overall
/// and per class, with what they cost.
fn score_all(
    results: Vec<anyhow::Result<Outcome>>,
    set: &Indexed,
    ks: &[usize],
    wall: f64,
) -> anyhow::Result<(serde_json::Map<String, Value>, BTreeMap<String, Acc>)> {
    let mut overall = Acc::default();
    let mut per_class: BTreeMap<String, Acc> = BTreeMap::new();
    let mut no_relevant = 0usize;
    let mut scanned = 0u64;
    let mut total_vectors = 0u64;
    let mut latency = 0.0;
    let mut took: Vec<f64> = Vec::new();
    for r in results {
        let o = r?;
        let relevant = set
            .class_size
            .get(&o.label)
            .copied()
            .unwrap_or(0)
            .saturating_sub(usize::from(o.self_excluded));
        if relevant == 0 {
            no_relevant += 1;
            continue;
        }
        let s = score(&o.top, &o.full, relevant, ks);
        overall.add(&s);
        per_class.entry(o.label).or_default().add(&s);
        scanned += o.vectors_scanned;
        total_vectors += o.vectors_total;
        latency += o.took;
        took.push(o.took);
    }
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if took.is_empty() {
            return 0.0;
        }
        took[((took.len() - 1) as f64 * p).round() as usize] * 1e3
    };
    let mut report = overall.json(ks);
    report.insert("images".into(), json!(set.stored()));
    report.insert("queries_without_relevant".into(), json!(no_relevant));
    // Each query costs two searches; the rate counts queries.
    report.insert(
        "queries_per_second".into(),
        json!(overall.n as f64 / wall.max(1e-9)),
    );
    report.insert(
        "mean_search_ms".into(),
        json!(latency * 1e3 / overall.n.max(1) as f64),
    );
    // The first (top-100) search of each query, as the gateway answered
    // it with CONCURRENCY in flight.
    report.insert("p50_search_ms".into(), json!(pct(0.5)));
    report.insert("p99_search_ms".into(), json!(pct(0.99)));
    report.insert(
        "read_fraction".into(),
        json!(scanned as f64 / total_vectors.max(1) as f64),
    );
    report.insert(
        "index_images_per_second".into(),
        json!(set.added.added as f64 / set.added.seconds.max(1e-9)),
    );
    report.insert(
        "per_class".into(),
        Value::Object(
            per_class
                .iter()
                .map(|(l, a)| (l.clone(), Value::Object(a.json(ks))))
                .collect(),
        ),
    );
    Ok((report, per_class))
}

fn print_report(
    report: &serde_json::Map<String, Value>,
    ks: &[usize],
    per_class: &BTreeMap<String, Acc>,
) {
    let f = |k: &str| report.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let mut head = format!(
        "mode {}: {} queries over {} images",
        report.get("mode").and_then(Value::as_str).unwrap_or(""),
        report.get("queries").and_then(Value::as_u64).unwrap_or(0),
        report.get("images").and_then(Value::as_u64).unwrap_or(0)
    );
    for k in ks {
        head.push_str(&format!("  P@{k} {:.4}", f(&format!("P@{k}"))));
    }
    head.push_str(&format!(
        "  mAP {:.4}  mAP@100 {:.4}  {:.1} queries/s  read {:.1}%  p50 {:.1} ms  p99 {:.1} ms",
        f("mAP"),
        f("mAP@100"),
        f("queries_per_second"),
        f("read_fraction") * 100.0,
        f("p50_search_ms"),
        f("p99_search_ms")
    ));
    println!("{head}");
    for (label, a) in per_class {
        let m = a.json(ks);
        let g = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let mut line = format!("  {label:<28} n={:<5}", a.n);
        for k in ks {
            line.push_str(&format!(" P@{k} {:.3}", g(&format!("P@{k}"))));
        }
        line.push_str(&format!(" mAP {:.3} mAP@100 {:.3}", g("mAP"), g("mAP@100")));
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_hand_computed_values() {
        // Relevant at ranks 1, 3 and 6 of the first results; 4 relevant in
        // all, one of them never returned.
        let top = [true, false, true, false, false, true];
        let s = score(&top, &top, 4, &[1, 5, 10]);
        assert_eq!(s.precision, vec![1.0, 0.4, 0.3]);
        let expected = (1.0 + 2.0 / 3.0 + 3.0 / 6.0) / 4.0;
        assert!((s.ap - expected).abs() < 1e-12, "{}", s.ap);
        assert!((s.ap100 - expected).abs() < 1e-12);
        // AP@100 divides by at most 100 even with more relevant images.
        let all = vec![true; 150];
        let s = score(&all, &all, 150, &[10]);
        assert!((s.ap100 - 1.0).abs() < 1e-12);
        assert!((s.ap - 1.0).abs() < 1e-12);
        // A ranking that misses relevant images is charged for them.
        let s = score(&[true], &[true], 2, &[1]);
        assert!((s.ap - 0.5).abs() < 1e-12);
    }
}
