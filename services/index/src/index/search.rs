//! Searches: checked against the collection, then scanned off the runtime.

use std::time::Instant;

use futures::StreamExt;

use super::{Collection, Index, SearchRequest, SearchResult};
use crate::error::{Error, Result};
use crate::kernels;
use crate::mem::{
    Expansion, Filter, Mode, Query, ScanBatch, Searched, Shortlists, Term, VectorSource,
};
use crate::store::Store;

/// The database as the source of exact vectors for compact storage.
struct StoreVectors {
    store: Store,
    collection_id: i64,
    rt: tokio::runtime::Handle,
}

impl VectorSource for StoreVectors {
    fn fetch(&self, ids: &[u64]) -> std::result::Result<Vec<(u64, Vec<f32>)>, String> {
        self.rt
            .block_on(self.store.features(self.collection_id, ids))
            .map_err(|e| e.to_string())
    }

    fn scan(&self, each: &mut ScanBatch<'_>) -> std::result::Result<(), String> {
        let mut after = 0;
        loop {
            let page = self
                .rt
                .block_on(
                    self.store
                        .load_page(self.collection_id, after, super::LOAD_PAGE),
                )
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.id;
            let full = page.len() as u64 == super::LOAD_PAGE;
            for img in &page {
                each(img.id, &img.feature);
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// What compact storage's searches read from the database, fetched with
/// the collection's lock released: the first attempt records the short
/// list it asks for and stops, the list is read without the lock (a write
/// waiting for it would hold every search up meanwhile), and the search
/// runs again, reading under the lock only what it asks for beyond that
/// list (the few final hits of refined ranking that were not in it).
/// Exact mode's scan still streams the database under the lock.
struct Prefetched<'a> {
    db: &'a StoreVectors,
    have: std::collections::HashMap<u64, Vec<f32>>,
    /// Asked for and not in the database (deleted meanwhile).
    absent: std::collections::HashSet<u64>,
    missing: parking_lot::Mutex<Vec<u64>>,
    /// Second attempt: read what is missing rather than stop.
    read_missing: bool,
    /// The first attempt's rankings, which the second reuses.
    shortlists: Shortlists,
}

/// The most expansion terms a search takes: `refined.qe_k` is at most
/// 100, and a shard answers at least one term.
const MAX_TERMS: usize = 100;

/// What the first attempt answers when it needs vectors not fetched yet.
const NOT_FETCHED: &str = "vectors not fetched yet";

impl<'a> Prefetched<'a> {
    fn new(db: &'a StoreVectors) -> Self {
        Self {
            db,
            have: Default::default(),
            absent: Default::default(),
            missing: Default::default(),
            read_missing: false,
            shortlists: Shortlists::default(),
        }
    }

    /// Reads what the last attempt asked for.
    fn fetch_missing(&mut self) -> std::result::Result<(), String> {
        let ids = std::mem::take(&mut *self.missing.lock());
        self.absent.extend(ids.iter().copied());
        for (id, v) in self.db.fetch(&ids)? {
            self.absent.remove(&id);
            self.have.insert(id, v);
        }
        Ok(())
    }
}

impl VectorSource for Prefetched<'_> {
    fn fetch(&self, ids: &[u64]) -> std::result::Result<Vec<(u64, Vec<f32>)>, String> {
        let missing: Vec<u64> = ids
            .iter()
            .filter(|id| !self.have.contains_key(id) && !self.absent.contains(id))
            .copied()
            .collect();
        if !missing.is_empty() && !self.read_missing {
            self.missing.lock().extend(missing);
            return Err(NOT_FETCHED.into());
        }
        let mut out: Vec<(u64, Vec<f32>)> = ids
            .iter()
            .filter_map(|id| Some((*id, self.have.get(id)?.clone())))
            .collect();
        if !missing.is_empty() {
            out.extend(self.db.fetch(&missing)?);
        }
        Ok(out)
    }

    fn scan(&self, each: &mut ScanBatch<'_>) -> std::result::Result<(), String> {
        self.db.scan(each)
    }

    fn shortlists(&self) -> Option<&Shortlists> {
        Some(&self.shortlists)
    }
}

impl Index {
    pub async fn search(&self, req: SearchRequest) -> Result<SearchResult> {
        let mut coll = self.resolve(&req.collection)?;
        if let Some((name, version)) = &req.model {
            let other =
                |c: &Collection| *name != c.row.model_name || *version != c.row.model_version;
            // A rebuild through another service (a sharded index's shard
            // 0) may have switched the name a moment before this service
            // follows: the names as the database has them now.
            if other(&coll) && self.sync_aliases().await? {
                coll = self.resolve(&req.collection)?;
            }
            if other(&coll) {
                return Err(Error::FailedPrecondition(format!(
                    "collection {:?} holds features of model {}:{}, not of {name}:{version}: it \
                     was rebuilt for another model; embed the query with {}:{}",
                    req.collection,
                    coll.row.model_name,
                    coll.row.model_version,
                    coll.row.model_name,
                    coll.row.model_version
                )));
            }
        }
        if req.top_k == 0 || req.top_k > self.limits.max_top_k {
            return Err(Error::InvalidArgument(format!(
                "top_k must be 1 to {}, got {}",
                self.limits.max_top_k, req.top_k
            )));
        }
        if req.offset.saturating_add(req.top_k) > self.limits.max_top_k {
            return Err(Error::InvalidArgument(format!(
                "offset + top_k must be at most {} (the deepest result a search ranks), got offset {} + top_k {}",
                self.limits.max_top_k, req.offset, req.top_k
            )));
        }
        self.check_filter(&req.filter)?;
        if !(0.0..=1.0).contains(&req.min_similarity) {
            return Err(Error::InvalidArgument(format!(
                "min_similarity must be between 0 and 1, got {}",
                req.min_similarity
            )));
        }
        let mut vector = req.vector;
        if vector.len() != coll.row.dims as usize {
            return Err(Error::InvalidArgument(format!(
                "query vector has {} dimensions, collection {} holds {}",
                vector.len(),
                req.collection,
                coll.row.dims
            )));
        }
        if !kernels::normalize(&mut vector) {
            return Err(Error::InvalidArgument(
                "query vector is zero or not finite".into(),
            ));
        }
        let mode = req.mode.unwrap_or(self.default_mode);
        if mode == Mode::Partition && req.predicted_class.is_none() {
            return Err(Error::InvalidArgument(
                "partition mode needs the query's predicted class".into(),
            ));
        }
        let expansion = match req.expansion {
            // A search that does not rank refined answers as usual: the
            // gateway merges its hits.
            Expansion::TermsOnly if mode != Mode::Refined => Expansion::Own,
            Expansion::Given(terms) => {
                self.check_terms(&terms, mode, coll.row.dims as usize)?;
                Expansion::Given(terms)
            }
            e => e,
        };
        let expansion_k = self.refine.qe_k;
        let rule = self.probe;
        let (top_k, offset, min_similarity, predicted_class, exclude_id, filter) = (
            req.top_k,
            req.offset,
            req.min_similarity,
            req.predicted_class,
            req.exclude_id,
            req.filter,
        );
        // Scans take milliseconds on large collections: off the runtime.
        let span = tracing::info_span!(
            "partition_scan",
            mode = ?mode,
            top_k,
            partitions_searched = tracing::field::Empty,
            vectors_scanned = tracing::field::Empty,
        );
        let source = StoreVectors {
            store: self.store.clone(),
            collection_id: coll.row.id,
            rt: tokio::runtime::Handle::current(),
        };
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let started = Instant::now();
            let query = Query {
                vector: &vector,
                predicted_class,
                // One more than the page shows tells whether another follows.
                top_k: offset + top_k + 1,
                mode,
                min_similarity,
                exclude_id,
                filter: &filter,
            };
            let mut pre = Prefetched::new(&source);
            let search = |pre: &Prefetched<'_>| {
                coll.mem
                    .read()
                    .search_expanding(&query, rule, pre, &expansion)
            };
            let first = search(&pre);
            let found = match first {
                Err(e) if e == NOT_FETCHED => pre.fetch_missing().and_then(|()| {
                    pre.read_missing = true;
                    search(&pre)
                }),
                r => r,
            };
            let Searched {
                mut hits,
                stats,
                terms,
            } = found.map_err(|e| {
                Error::Unavailable(format!(
                    "reading the exact vectors of a compact collection from the database failed: {e}; retry once the database is reachable"
                ))
            })?;
            let has_more = hits.len() > offset + top_k;
            hits.truncate(offset + top_k);
            hits.drain(..offset.min(hits.len()));
            span.record("partitions_searched", stats.partitions_searched);
            span.record("vectors_scanned", stats.vectors_scanned);
            Ok(SearchResult {
                hits,
                has_more,
                stats,
                mode,
                took_us: started.elapsed().as_micros() as u64,
                terms,
                expansion_k,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("search task: {e}")))?
    }

    /// Many searches, each answered (or refused) on its own; at most
    /// `limits.max_batch_queries`. A few run at once, each scan off the
    /// runtime like a single search.
    pub async fn search_batch(
        &self,
        reqs: Vec<SearchRequest>,
    ) -> Result<Vec<Result<SearchResult>>> {
        self.check_search_batch(reqs.len())?;
        let at_once = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(futures::stream::iter(reqs)
            .map(|r| self.search(r))
            .buffered(at_once)
            .collect()
            .await)
    }

    /// Refuses a batch of `n` queries over `limits.max_batch_queries`.
    pub fn check_search_batch(&self, n: usize) -> Result<()> {
        if n > self.limits.max_batch_queries {
            return Err(Error::InvalidArgument(format!(
                "a batch holds at most {} queries (limits.max_batch_queries), got {n}: split it",
                self.limits.max_batch_queries
            )));
        }
        Ok(())
    }

    /// Refuses expansion terms a refined search here could not have sent:
    /// more than any shard answers, or vectors of another size.
    fn check_terms(&self, terms: &[Term], mode: Mode, dims: usize) -> Result<()> {
        if mode != Mode::Refined {
            return Err(Error::InvalidArgument(format!(
                "expansion terms are for refined searches, this one is {mode:?}: leave them out"
            )));
        }
        if terms.len() > MAX_TERMS {
            return Err(Error::InvalidArgument(format!(
                "a refined search takes at most {MAX_TERMS} expansion terms, got {}",
                terms.len()
            )));
        }
        let bad = terms.iter().find(|t| {
            let sound = t.vector.len() == dims
                && t.rank.is_finite()
                && t.weight.is_finite()
                && t.weight >= 0.0
                && t.vector.iter().all(|x| x.is_finite());
            !sound
        });
        if let Some(t) = bad {
            return Err(Error::InvalidArgument(format!(
                "expansion term {} needs a finite rank, a finite weight of 0 or more and a \
                 finite vector of {dims} dimensions (it has {})",
                t.id,
                t.vector.len()
            )));
        }
        Ok(())
    }

    /// Refuses a filter over the limits, naming the field.
    fn check_filter(&self, f: &Filter) -> Result<()> {
        let max = self.limits.max_filter_labels;
        for (field, labels) in [
            ("filter.labels_in", &f.labels_in),
            ("filter.labels_not_in", &f.labels_not_in),
        ] {
            if labels.len() > max {
                return Err(Error::InvalidArgument(format!(
                    "{field} holds {} labels, the limit is {max}",
                    labels.len()
                )));
            }
            if let Some(l) = labels.iter().find(|l| l.len() > self.limits.max_label_len) {
                return Err(Error::InvalidArgument(format!(
                    "{field} holds a label of {} bytes, the limit is {} bytes",
                    l.len(),
                    self.limits.max_label_len
                )));
            }
        }
        if f.path_prefix.len() > self.limits.max_path_len {
            return Err(Error::InvalidArgument(format!(
                "filter.path_prefix is {} bytes, the limit is {} bytes",
                f.path_prefix.len(),
                self.limits.max_path_len
            )));
        }
        if f.created_from_ms < 0 || f.created_to_ms < 0 {
            return Err(Error::InvalidArgument(
                "filter.created_from_ms and filter.created_to_ms are Unix milliseconds: 0 (no bound) or more".into(),
            ));
        }
        if f.created_to_ms != 0 && f.created_from_ms > f.created_to_ms {
            return Err(Error::InvalidArgument(format!(
                "filter.created_from_ms ({}) is after filter.created_to_ms ({}): swap them",
                f.created_from_ms, f.created_to_ms
            )));
        }
        Ok(())
    }
}
