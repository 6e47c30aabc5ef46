//! Searches: checked against the collection, then scanned off the runtime.

use std::time::Instant;

use super::{Index, SearchRequest, SearchResult};
use crate::error::{Error, Result};
use crate::kernels;
use crate::mem::{Mode, Query};

impl Index {
    pub async fn search(&self, req: SearchRequest) -> Result<SearchResult> {
        let coll = self.resolve(&req.collection)?;
        if let Some((name, version)) = &req.model {
            if *name != coll.row.model_name || *version != coll.row.model_version {
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
        let rule = self.probe;
        let (top_k, min_similarity, predicted_class, exclude_id) = (
            req.top_k,
            req.min_similarity,
            req.predicted_class,
            req.exclude_id,
        );
        // Scans take milliseconds on large collections: off the runtime.
        let span = tracing::info_span!(
            "partition_scan",
            mode = ?mode,
            top_k,
            partitions_searched = tracing::field::Empty,
            vectors_scanned = tracing::field::Empty,
        );
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let started = Instant::now();
            let mem = coll.mem.read();
            let (hits, stats) = mem.search(
                &Query {
                    vector: &vector,
                    predicted_class,
                    top_k,
                    mode,
                    min_similarity,
                    exclude_id,
                },
                rule,
            );
            span.record("partitions_searched", stats.partitions_searched);
            span.record("vectors_scanned", stats.vectors_scanned);
            SearchResult {
                hits,
                stats,
                mode,
                took_us: started.elapsed().as_micros() as u64,
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("search task: {e}")))
    }
}
