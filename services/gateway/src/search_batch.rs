//! Many searches in one call: the query images are embedded together (one
//! `Embed` call per model, which the inference batcher runs as batches),
//! stored-image queries read their stored features, and the index ranks
//! every query in one `SearchBatch` call. Each query is answered or fails
//! on its own: a corrupt image fails only its item.

use std::collections::HashMap;
use std::time::Instant;

use cbir_api::v1 as pb;
use pb::search_request::Query;

use crate::error::{Error, Result, Upstream};
use crate::gateway::{same_model, Gateway};
use crate::search::{index_request, Checked, Resolved};

/// A query's failure as its item shows it (shared by the queries of a
/// call that failed whole).
type Failed = pb::ItemError;
/// One query's outcome while the batch is worked through.
type Slot = Option<Result<pb::SearchResponse, Failed>>;

impl Gateway {
    #[tracing::instrument(name = "gateway.search_batch", skip_all)]
    pub async fn search_batch(
        &self,
        req: pb::SearchBatchRequest,
    ) -> Result<pb::SearchBatchResponse> {
        let started = Instant::now();
        let max = self.cfg.limits.max_batch_queries;
        if req.queries.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch search needs at least one query".into(),
            ));
        }
        if req.queries.len() > max {
            return Err(Error::InvalidArgument(format!(
                "a batch search holds at most {max} queries (limits.max_batch_queries), got {}: split it",
                req.queries.len()
            )));
        }
        let mut slots: Vec<Slot> = (0..req.queries.len()).map(|_| None).collect();
        let mut checked: Vec<(usize, Checked)> = Vec::new();
        for (i, mut q) in req.queries.into_iter().enumerate() {
            if q.collection.trim().is_empty() {
                q.collection.clone_from(&req.collection);
            }
            match self.check_search(q) {
                Ok(c) => checked.push((i, c)),
                Err(e) => slots[i] = Some(Err(failed(e))),
            }
        }
        let resolved = self.resolve_batch(&checked).await;
        let mut ready: Vec<(usize, Checked, Resolved)> = Vec::new();
        for ((i, c), r) in checked.into_iter().zip(resolved) {
            match r {
                Ok(r) => ready.push((i, c, r)),
                Err(e) => slots[i] = Some(Err(e)),
            }
        }
        self.rank_batch(ready, &mut slots, started).await;
        Ok(pb::SearchBatchResponse {
            items: slots
                .into_iter()
                .map(|s| {
                    let s = s.unwrap_or_else(|| {
                        Err(failed(Error::Internal(
                            "a batch query went unanswered".into(),
                        )))
                    });
                    match s {
                        Ok(response) => pb::SearchBatchItem {
                            response: Some(response),
                            error: None,
                        },
                        Err(e) => pb::SearchBatchItem {
                            response: None,
                            error: Some(e),
                        },
                    }
                })
                .collect(),
        })
    }

    /// Each checked query as a vector: images embedded together per model,
    /// the other queries resolved as a single search resolves them.
    async fn resolve_batch(&self, checked: &[(usize, Checked)]) -> Vec<Result<Resolved, Failed>> {
        let mut out: Vec<Option<Result<Resolved, Failed>>> =
            (0..checked.len()).map(|_| None).collect();
        // Query images by the collection they search (its model).
        let mut images: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut others = Vec::new();
        for (k, (_, c)) in checked.iter().enumerate() {
            match &c.query {
                Query::Image(data) => match self.check_query_image(data) {
                    Ok(()) => images.entry(c.collection.as_str()).or_default().push(k),
                    Err(e) => out[k] = Some(Err(failed(e))),
                },
                _ => others.push(k),
            }
        }
        let rest =
            futures::future::join_all(others.iter().map(|&k| self.resolve_query(&checked[k].1)));
        let embedded = futures::future::join_all(
            images
                .into_iter()
                .map(|(name, ks)| self.embed_batch(name, checked, ks)),
        );
        let (rest, embedded) = tokio::join!(rest, embedded);
        for (k, r) in others.into_iter().zip(rest) {
            out[k] = Some(r.map_err(failed));
        }
        for (k, r) in embedded.into_iter().flatten() {
            out[k] = Some(r);
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(failed(Error::Internal(
                        "a batch query was not resolved".into(),
                    )))
                })
            })
            .collect()
    }

    /// The query images `ks` of collection `name`, embedded in one call.
    /// When the inference service answers with another model than the
    /// collection's (a rebuild switched it), each query takes the single
    /// search's path, which looks the collection up again.
    async fn embed_batch(
        &self,
        name: &str,
        checked: &[(usize, Checked)],
        ks: Vec<usize>,
    ) -> Vec<(usize, Result<Resolved, Failed>)> {
        let coll = match self.collection(name).await {
            Ok(c) => c,
            Err(e) => {
                let e = failed(e);
                return ks.into_iter().map(|k| (k, Err(e.clone()))).collect();
            }
        };
        let images: Vec<pb::ImageInput> = ks
            .iter()
            .map(|&k| pb::ImageInput {
                id: k.to_string(),
                data: match &checked[k].1.query {
                    Query::Image(d) => d.clone(),
                    _ => Vec::new(),
                },
            })
            .collect();
        let msg = pb::EmbedRequest {
            images,
            priority: pb::Priority::Interactive as i32,
            include_probabilities: false,
            model: coll.model.clone(),
            include_renditions: false,
        };
        let resp = match self
            .inference_rpc(
                "Embed",
                Self::t(self.cfg.timeouts.search_ms),
                msg,
                |mut c, r| async move { c.embed(r).await },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let e = failed(e);
                return ks.into_iter().map(|k| (k, Err(e.clone()))).collect();
            }
        };
        if !same_model(coll.model.as_ref(), resp.model.as_ref()) {
            let singles = ks.iter().map(|&k| self.resolve_query(&checked[k].1));
            return ks
                .iter()
                .copied()
                .zip(futures::future::join_all(singles).await)
                .map(|(k, r)| (k, r.map_err(failed)))
                .collect();
        }
        let mut by_id: HashMap<String, pb::EmbedResult> = resp
            .results
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        ks.into_iter()
            .map(|k| {
                let r = match by_id.remove(&k.to_string()).and_then(|r| r.outcome) {
                    Some(pb::embed_result::Outcome::Embedding(emb)) => {
                        Ok(Resolved::embedded(coll.clone(), emb, resp.model.clone()))
                    }
                    Some(pb::embed_result::Outcome::Error(e)) => Err(Error::upstream(
                        Upstream::Inference,
                        tonic::Status::new(tonic::Code::from(e.code), e.message),
                    )),
                    None => Err(Error::Internal(
                        "the inference service returned no result for a query image".into(),
                    )),
                };
                (k, r.map_err(failed))
            })
            .collect()
    }

    /// Ranks every resolved query in one index call; a query the index
    /// refuses because its collection was rebuilt for another model is
    /// searched again on its own (embedded anew).
    async fn rank_batch(
        &self,
        ready: Vec<(usize, Checked, Resolved)>,
        slots: &mut [Slot],
        started: Instant,
    ) {
        let mut sent: Vec<(usize, Checked, Resolved)> = Vec::new();
        let mut queries = Vec::new();
        for (i, c, r) in ready {
            match index_request(&c, &r) {
                Ok(q) => {
                    queries.push(q);
                    sent.push((i, c, r));
                }
                Err(e) => slots[i] = Some(Err(failed(e))),
            }
        }
        if sent.is_empty() {
            return;
        }
        let answered = self
            .index_search_batch(
                pb::IndexSearchBatchRequest { queries },
                Self::t(self.cfg.timeouts.search_ms),
            )
            .await;
        let items = match answered {
            Ok(r) => r.items,
            Err(e) => {
                let e = failed(e);
                for (i, _, _) in sent {
                    slots[i] = Some(Err(e.clone()));
                }
                return;
            }
        };
        let mut items = items.into_iter();
        for (i, c, mut r) in sent {
            let item = items.next().unwrap_or_default();
            let found = match (item.response, item.error) {
                (Some(found), _) => Ok(found),
                (None, Some(e)) => {
                    let err = Error::upstream(
                        Upstream::Index,
                        tonic::Status::new(tonic::Code::from(e.code), e.message),
                    );
                    match (&err, &c.query) {
                        (Error::FailedPrecondition(_), Query::Image(_)) => {
                            self.search_index(&c, &mut r).await
                        }
                        _ => Err(err),
                    }
                }
                (None, None) => Err(Error::Internal(
                    "the index service left a batch query unanswered".into(),
                )),
            };
            slots[i] = Some(match found {
                Ok(found) => Ok(self.answer(c, r, found, started).await),
                Err(e) => Err(failed(e)),
            });
        }
    }
}

/// A query's failure with the code and message a single search answers.
fn failed(e: Error) -> Failed {
    let status = tonic::Status::from(e);
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}
