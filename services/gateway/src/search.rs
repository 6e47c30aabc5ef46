//! Searching a collection: with an uploaded image (embedded with the
//! model the collection is bound to), a stored image, or a vector.

use std::time::Instant;

use cbir_api::v1 as pb;
use pb::search_request::Query;

use crate::collections::Next;
use crate::error::{Error, Result};
use crate::gateway::{model_label, same_model, Gateway};

/// Results of a search that asks for none in particular.
const DEFAULT_TOP_K: u32 = 20;

pub fn mode_name(mode: i32) -> &'static str {
    match pb::SearchMode::try_from(mode).unwrap_or(pb::SearchMode::Unspecified) {
        pb::SearchMode::Partition => "partition",
        pb::SearchMode::Exact => "exact",
        pb::SearchMode::Probe => "probe",
        // The index always names the mode it used; unspecified is its default.
        pb::SearchMode::Refined | pb::SearchMode::Unspecified => "refined",
    }
}

/// What ordered the results, as the REST API names it.
pub fn ranked_by_name(r: i32) -> &'static str {
    match pb::RankedBy::try_from(r).unwrap_or(pb::RankedBy::Unspecified) {
        pb::RankedBy::RefinedScore => "refined_score",
        pb::RankedBy::Distance | pb::RankedBy::Unspecified => "distance",
    }
}

/// A mode by name; empty means the index service's default (refined).
pub fn parse_mode(s: &str) -> Result<pb::SearchMode> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" => Ok(pb::SearchMode::Unspecified),
        "refined" => Ok(pb::SearchMode::Refined),
        "probe" => Ok(pb::SearchMode::Probe),
        "partition" => Ok(pb::SearchMode::Partition),
        "exact" => Ok(pb::SearchMode::Exact),
        other => Err(Error::InvalidArgument(format!(
            "unknown search mode {other:?}: use refined, probe, exact or partition"
        ))),
    }
}

fn query_info(emb: &pb::Embedding) -> pb::QueryInfo {
    pb::QueryInfo {
        predicted_class: emb.predicted_class,
        predicted_name: emb.predicted_name.clone(),
        confidence: emb.confidence,
        top5: emb.top5.clone(),
    }
}

/// A search request within the limits.
pub(crate) struct Checked {
    pub(crate) collection: String,
    top_k: u32,
    mode: pb::SearchMode,
    min_similarity: f32,
    pub(crate) query: Query,
    /// Checked by the index, which names the field at fault.
    filter: Option<pb::ImageFilter>,
    offset: u32,
}

/// The query as a vector, with the collection it searches.
pub(crate) struct Resolved {
    pub(crate) coll: pb::Collection,
    vector: Vec<f32>,
    predicted_class: i32,
    exclude_id: u64,
    pub(crate) info: Option<pb::QueryInfo>,
    /// The model of an embedded query, sent along so that the index
    /// refuses a collection rebuilt for another model meanwhile.
    model: Option<pb::ModelRef>,
}

impl Resolved {
    pub(crate) fn embedded(
        coll: pb::Collection,
        emb: pb::Embedding,
        model: Option<pb::ModelRef>,
    ) -> Self {
        Self {
            coll,
            info: Some(query_info(&emb)),
            vector: emb.feature,
            predicted_class: emb.predicted_class,
            exclude_id: 0,
            model,
        }
    }
}

/// The index's request for a resolved query; refused when the collection
/// holds nothing to search.
pub(crate) fn index_request(c: &Checked, q: &Resolved) -> Result<pb::IndexSearchRequest> {
    if q.coll.count == 0 {
        return Err(Error::FailedPrecondition(format!(
            "collection {:?} is empty: add images first (Index page, or `cbir index add`)",
            c.collection
        )));
    }
    Ok(pb::IndexSearchRequest {
        collection: c.collection.clone(),
        vector: q.vector.clone(),
        predicted_class: q.predicted_class,
        class_probabilities: Vec::new(),
        top_k: c.top_k,
        mode: c.mode as i32,
        min_similarity: c.min_similarity,
        exclude_id: q.exclude_id,
        model: q.model.clone(),
        filter: c.filter.clone(),
        offset: c.offset,
        // Set by the sharded merge (sharded.rs) where it asks for them.
        expansion_only: false,
        expansion: Vec::new(),
    })
}

impl Gateway {
    #[tracing::instrument(name = "gateway.search", skip_all)]
    pub async fn search(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse> {
        let started = Instant::now();
        let checked = self.check_search(req)?;
        let mut query = self.resolve_query(&checked).await?;
        let found = self.search_index(&checked, &mut query).await?;
        Ok(self.answer(checked, query, found, started).await)
    }

    /// The public answer of an index search.
    pub(crate) async fn answer(
        &self,
        checked: Checked,
        query: Resolved,
        found: pb::IndexSearchResponse,
        started: Instant,
    ) -> pb::SearchResponse {
        let results = self
            .name_partitions(&query.coll, found.hits, checked.offset)
            .await;
        pb::SearchResponse {
            results,
            query: query.info,
            stats: found.stats,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
            collection: checked.collection,
            has_more: found.has_more,
            ranked_by: found.ranked_by,
            mode: if found.mode == 0 {
                checked.mode as i32
            } else {
                found.mode
            },
        }
    }

    pub(crate) fn check_search(&self, req: pb::SearchRequest) -> Result<Checked> {
        let collection = self.collection_name(&req.collection)?;
        let top_k = match req.top_k {
            0 => DEFAULT_TOP_K,
            k if k as usize > self.cfg.limits.max_top_k => {
                return Err(Error::InvalidArgument(format!(
                    "top_k {k} is over the limit of {}",
                    self.cfg.limits.max_top_k
                )))
            }
            k => k,
        };
        let max = self.cfg.limits.max_top_k;
        if req.offset as usize + top_k as usize > max {
            return Err(Error::InvalidArgument(format!(
                "offset + top_k must be at most {max} (limits.max_top_k), got offset {} + top_k {top_k}: results that deep are not ranked",
                req.offset
            )));
        }
        if !(0.0..=1.0).contains(&req.min_similarity) {
            return Err(Error::InvalidArgument(format!(
                "min_similarity {} is outside 0..1",
                req.min_similarity
            )));
        }
        let mode = pb::SearchMode::try_from(req.mode)
            .map_err(|_| Error::InvalidArgument(format!("unknown search mode {}", req.mode)))?;
        let query = req.query.ok_or_else(|| {
            Error::InvalidArgument("no query: send an image, a stored image id or a vector".into())
        })?;
        Ok(Checked {
            collection,
            top_k,
            mode,
            min_similarity: req.min_similarity,
            query,
            filter: req.filter,
            offset: req.offset,
        })
    }

    /// Refuses an empty or oversized query image before it is sent.
    pub(crate) fn check_query_image(&self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Err(Error::InvalidArgument("the query image is empty".into()));
        }
        if data.len() > self.cfg.limits.max_image_bytes {
            return Err(Error::TooLarge(format!(
                "the query image has {} bytes, the limit is {} bytes",
                data.len(),
                self.cfg.limits.max_image_bytes
            )));
        }
        Ok(())
    }

    pub(crate) async fn resolve_query(&self, c: &Checked) -> Result<Resolved> {
        let collection = &c.collection;
        match &c.query {
            Query::Image(data) => {
                self.check_query_image(data)?;
                // The collection first: the query is embedded with its model.
                let coll = self.collection(collection).await?;
                let (coll, emb, model) = self.embed_query(collection, coll, data).await?;
                Ok(Resolved::embedded(coll, emb, model))
            }
            Query::Stored(s) => {
                let from = if s.collection.trim().is_empty() {
                    collection.clone()
                } else {
                    s.collection.trim().to_string()
                };
                let exclude_id = if s.exclude_self && &from == collection {
                    s.id
                } else {
                    0
                };
                let (coll, img) =
                    tokio::join!(self.collection(collection), self.stored(&from, s.id));
                let img = img?;
                Ok(Resolved {
                    coll: coll?,
                    vector: img.feature,
                    predicted_class: img.predicted_class,
                    exclude_id,
                    info: None,
                    model: None,
                })
            }
            Query::Vector(v) => {
                if v.values.is_empty() {
                    return Err(Error::InvalidArgument("the query vector is empty".into()));
                }
                Ok(Resolved {
                    coll: self.collection(collection).await?,
                    vector: v.values.clone(),
                    predicted_class: v.predicted_class,
                    exclude_id: 0,
                    info: None,
                    model: None,
                })
            }
        }
    }

    /// The index's search. When it refuses an embedded query because the
    /// collection is now bound to another model (a rebuild switched it
    /// since it was cached), the query is embedded again with that model.
    pub(crate) async fn search_index(
        &self,
        c: &Checked,
        q: &mut Resolved,
    ) -> Result<pb::IndexSearchResponse> {
        let collection = &c.collection;
        let mut again = self.look_again(collection);
        loop {
            let msg = index_request(c, q)?;
            let searched = self
                .index_search(msg, Self::t(self.cfg.timeouts.search_ms))
                .await;
            let (Err(Error::FailedPrecondition(e)), Query::Image(data)) = (&searched, &c.query)
            else {
                return searched;
            };
            match again.after_mismatch(&mut q.coll, None).await? {
                Next::Retry => {
                    let (coll, emb, model) =
                        self.embed_query(collection, q.coll.clone(), data).await?;
                    let exclude_id = q.exclude_id;
                    *q = Resolved::embedded(coll, emb, model);
                    q.exclude_id = exclude_id;
                }
                Next::Keep | Next::GiveUp => return Err(Error::FailedPrecondition(e.clone())),
            }
        }
    }

    /// The results, each named after its partition's class and ranked in
    /// the whole list (the page starts after `offset` results).
    async fn name_partitions(
        &self,
        coll: &pb::Collection,
        hits: Vec<pb::SearchHit>,
        offset: u32,
    ) -> Vec<pb::SearchResult> {
        let names = self.class_names(coll.model.as_ref()).await;
        let partition_name = |p: i32| -> String {
            names
                .as_ref()
                .and_then(|n| usize::try_from(p).ok().and_then(|i| n.get(i)))
                .cloned()
                .unwrap_or_else(|| format!("class {p}"))
        };
        hits.into_iter()
            .enumerate()
            .map(|(i, h)| pb::SearchResult {
                rank: offset + i as u32 + 1,
                created_at_ms: h.created_at_ms,
                id: h.id,
                partition_name: partition_name(h.partition),
                file_name: h.file_name,
                path: h.path,
                label: h.label,
                distance: h.distance,
                similarity: h.similarity,
                partition: h.partition,
                score: h.score,
            })
            .collect()
    }

    /// Embeds a query image for collection `c` (as cached) with its model,
    /// looking again once when the inference service answers with another
    /// model (see [`crate::collections::LookAgain`]).
    pub(crate) async fn embed_query(
        &self,
        collection: &str,
        mut c: pb::Collection,
        data: &[u8],
    ) -> Result<(pb::Collection, pb::Embedding, Option<pb::ModelRef>)> {
        let mut again = self.look_again(collection);
        loop {
            let (emb, model) = self.embed_one(data.to_vec(), c.model.clone()).await?;
            if same_model(c.model.as_ref(), model.as_ref()) {
                return Ok((c, emb, model));
            }
            match again.after_mismatch(&mut c, model.as_ref()).await? {
                Next::Keep => return Ok((c, emb, model)),
                Next::Retry => continue,
                Next::GiveUp => {
                    return Err(Error::FailedPrecondition(format!(
                        "collection {collection:?} holds features of model {}, but the inference service serves {}: rebuild the collection for that model, or search another collection",
                        model_label(c.model.as_ref()),
                        model_label(model.as_ref())
                    )))
                }
            }
        }
    }

    /// Embeds a query with `model` when the inference service holds it (the
    /// active model or the one retained by its last swap); the answer names
    /// the model used.
    async fn embed_one(
        &self,
        data: Vec<u8>,
        model: Option<pb::ModelRef>,
    ) -> Result<(pb::Embedding, Option<pb::ModelRef>)> {
        let msg = pb::EmbedImageRequest {
            image: Some(pb::ImageInput {
                id: String::new(),
                data,
            }),
            priority: pb::Priority::Interactive as i32,
            include_probabilities: false,
            model,
        };
        let resp = self
            .inference_rpc(
                "EmbedImage",
                Self::t(self.cfg.timeouts.search_ms),
                msg,
                |mut c, r| async move { c.embed_image(r).await },
            )
            .await?;
        let emb = resp.embedding.ok_or_else(|| {
            Error::Internal("the inference service answered without an embedding".into())
        })?;
        Ok((emb, resp.model))
    }

    async fn stored(&self, collection: &str, id: u64) -> Result<pb::ImageRecord> {
        let msg = pb::GetImageRequest {
            collection: collection.to_string(),
            id,
            include_feature: true,
            ..Default::default()
        };
        self.get_image(msg, Self::t(self.cfg.timeouts.search_ms))
            .await
    }
}
