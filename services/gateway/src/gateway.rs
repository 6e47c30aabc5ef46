//! What the gateway does, whatever the protocol: REST and gRPC handlers are
//! thin translations onto these methods, so both give the same answers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use parking_lot::Mutex;
use tonic::transport::Channel;
use tonic::Status;

use crate::clients::{request, Pool, PoolConfig};
use crate::error::{Error, Result, Upstream};
use crate::Config;

/// Collection metadata is cached this long: a search needs the model the
/// collection is bound to, and asking the index every time costs a round trip.
const COLLECTION_TTL: Duration = Duration::from_secs(2);

pub struct Gateway {
    pub(crate) cfg: Arc<Config>,
    /// The process's decode budget (see `cbir_imaging::budget`).
    pub(crate) decode_budget: Arc<cbir_imaging::budget::Budget>,
    inference: Arc<Pool>,
    index: Arc<Pool>,
    pub(crate) training: Arc<Pool>,
    collections: Mutex<HashMap<String, (Instant, pb::Collection)>>,
    class_names: Mutex<Option<(pb::ModelRef, Arc<Vec<String>>)>>,
    pub auth: crate::auth::Auth,
}

fn inference_client(ch: Channel, max: usize) -> InferenceServiceClient<Channel> {
    InferenceServiceClient::new(ch)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

fn index_client(ch: Channel, max: usize) -> IndexServiceClient<Channel> {
    IndexServiceClient::new(ch)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
}

pub(crate) fn same_model(a: Option<&pb::ModelRef>, b: Option<&pb::ModelRef>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.name == b.name && a.version == b.version,
        _ => false,
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

pub(crate) fn model_label(m: Option<&pb::ModelRef>) -> String {
    m.map_or_else(|| "unknown".into(), |m| format!("{}:{}", m.name, m.version))
}

/// The label of an image from its path: the parent folder's name, as in a
/// folder-per-class data set.
pub fn label_from_path(path: &str) -> String {
    let mut parts = path.rsplit(['/', '\\']).filter(|s| !s.is_empty());
    let _file = parts.next();
    parts.next().unwrap_or_default().to_string()
}

pub fn file_name_of(path: &str) -> String {
    path.rsplit(['/', '\\'])
        .find(|s| !s.is_empty())
        .unwrap_or(path)
        .to_string()
}

pub fn mode_name(mode: i32) -> &'static str {
    match pb::SearchMode::try_from(mode).unwrap_or(pb::SearchMode::Unspecified) {
        pb::SearchMode::Partition => "partition",
        pb::SearchMode::Exact => "exact",
        pb::SearchMode::Probe | pb::SearchMode::Unspecified => "probe",
    }
}

pub fn parse_mode(s: &str) -> Result<pb::SearchMode> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "probe" => Ok(pb::SearchMode::Probe),
        "partition" => Ok(pb::SearchMode::Partition),
        "exact" => Ok(pb::SearchMode::Exact),
        other => Err(Error::InvalidArgument(format!(
            "unknown search mode {other:?}: use probe, partition or exact"
        ))),
    }
}

impl Gateway {
    pub async fn new(cfg: Arc<Config>) -> Result<Arc<Self>> {
        let pool = |service, urls: &Vec<String>| PoolConfig {
            service,
            urls: urls.clone(),
            retries: cfg.retries,
            connect_timeout: Duration::from_millis(cfg.timeouts.connect_ms),
            refresh: Duration::from_secs(cfg.dns_refresh_s.max(1)),
        };
        let inference = Pool::new(pool(Upstream::Inference, &cfg.inference_urls)).await?;
        let index = Pool::new(pool(Upstream::Index, &cfg.index_urls)).await?;
        let training = Pool::new(pool(Upstream::Training, &cfg.training_urls)).await?;
        let auth = crate::auth::Auth::new(cfg.auth.clone())?;
        let imaging = cfg.limits.imaging();
        let decode_budget = cbir_imaging::budget::Budget::shared(&imaging);
        if !decode_budget.made_from(&imaging) {
            tracing::warn!(
                decode_memory_bytes = decode_budget.memory_bytes(),
                "another service of this process set the decode budget first: its settings apply"
            );
        }
        Ok(Arc::new(Self {
            cfg,
            decode_budget,
            inference,
            index,
            training,
            collections: Mutex::new(HashMap::new()),
            class_names: Mutex::new(None),
            auth,
        }))
    }

    pub(crate) fn max_msg(&self) -> usize {
        self.cfg.max_message_bytes
    }

    pub(crate) fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// The collection a request names (the default one when it names
    /// none); refused when no collection can have that name, so that an
    /// unbounded name never travels to the index.
    pub fn collection_name(&self, name: &str) -> Result<String> {
        let n = name.trim();
        if n.is_empty() {
            return Ok(self.cfg.default_collection.clone());
        }
        cbir_api::names::check_lookup(n).map_err(Error::InvalidArgument)?;
        Ok(n.to_string())
    }

    /// One call of a backing service, with its deadline and retries; the
    /// message is cloned for each attempt.
    pub(crate) async fn rpc<C, Req, Resp, F, Fut>(
        &self,
        pool: &Pool,
        client: fn(Channel, usize) -> C,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        let max = self.max_msg();
        pool.call(what, timeout, true, |ch, t| {
            let fut = rpc(client(ch, max), request(msg.clone(), t));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    pub(crate) async fn index_rpc<Req: Clone, Resp, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        F: Fn(IndexServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        self.rpc(&self.index, index_client, what, timeout, msg, rpc)
            .await
    }

    pub(crate) async fn inference_rpc<Req: Clone, Resp, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        F: Fn(InferenceServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>,
    {
        self.rpc(&self.inference, inference_client, what, timeout, msg, rpc)
            .await
    }

    // ----- inference -------------------------------------------------------

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::GetModelInfoResponse> {
        let msg = pb::GetModelInfoRequest {
            include_class_names: false,
        };
        self.inference_rpc("GetModelInfo", timeout, msg, |mut c, r| async move {
            c.get_model_info(r).await
        })
        .await
    }

    /// Class names of the served model, to name partitions; cached per model.
    async fn class_names(&self, model: Option<&pb::ModelRef>) -> Option<Arc<Vec<String>>> {
        if let Some((m, names)) = &*self.class_names.lock() {
            if same_model(Some(m), model) {
                return Some(names.clone());
            }
        }
        let msg = pb::GetModelInfoRequest {
            include_class_names: true,
        };
        let info = self
            .inference_rpc(
                "GetModelInfo",
                Self::t(self.cfg.timeouts.admin_ms),
                msg,
                |mut c, r| async move { c.get_model_info(r).await },
            )
            .await
            .ok()?
            .info?;
        if !same_model(info.model.as_ref(), model) {
            return None;
        }
        let names = Arc::new(info.class_names);
        *self.class_names.lock() = info.model.map(|m| (m, names.clone()));
        Some(names)
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

    // ----- collections -------------------------------------------------------

    pub async fn list_collections(&self) -> Result<Vec<pb::Collection>> {
        self.list_collections_within(Self::t(self.cfg.timeouts.admin_ms))
            .await
    }

    /// A cheap call that shows the index service answers.
    pub async fn ping_index(&self, timeout: Duration) -> Result<String> {
        let n = self.list_collections_within(timeout).await?.len();
        Ok(format!("{n} collections"))
    }

    async fn list_collections_within(&self, timeout: Duration) -> Result<Vec<pb::Collection>> {
        let r = self
            .index_rpc(
                "ListCollections",
                timeout,
                pb::ListCollectionsRequest {},
                |mut c, r| async move { c.list_collections(r).await },
            )
            .await?;
        Ok(r.collections)
    }

    pub(crate) async fn fetch_collection(&self, name: &str) -> Result<pb::Collection> {
        let r = self
            .index_rpc(
                "GetCollection",
                Self::t(self.cfg.timeouts.admin_ms),
                pb::GetCollectionRequest {
                    name: name.to_string(),
                },
                |mut c, r| async move { c.get_collection(r).await },
            )
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!(
                    "no collection {name:?}: create it first (Index page, or `cbir index add --collection {name} FOLDER`)"
                )),
                e => e,
            })?;
        let c = r
            .collection
            .ok_or_else(|| Error::Internal("GetCollection answered without a collection".into()))?;
        self.collections
            .lock()
            .insert(name.to_string(), (Instant::now(), c.clone()));
        Ok(c)
    }

    /// The collection's metadata from the index, never from the cache: after
    /// a model mismatch, which a rebuild switching the name to a new model
    /// explains.
    pub(crate) async fn refresh_collection(&self, name: &str) -> Result<pb::Collection> {
        self.collections.lock().remove(name);
        self.fetch_collection(name).await
    }

    /// The collection's metadata, from the cache when fresh and non-empty
    /// (a stale "empty" must not refuse searches right after indexing).
    async fn collection(&self, name: &str) -> Result<pb::Collection> {
        if let Some((at, c)) = self.collections.lock().get(name) {
            if at.elapsed() < COLLECTION_TTL && c.count > 0 {
                return Ok(c.clone());
            }
        }
        self.fetch_collection(name).await
    }

    pub async fn create_collection(
        &self,
        req: pb::CreateGatewayCollectionRequest,
    ) -> Result<pb::Collection> {
        let name = req.name.trim().to_string();
        cbir_api::names::check_new(&name).map_err(Error::InvalidArgument)?;
        let info = self
            .model_info(Self::t(self.cfg.timeouts.admin_ms))
            .await?
            .info
            .ok_or_else(|| Error::Internal("GetModelInfo answered without info".into()))?;
        let msg = pb::CreateCollectionRequest {
            name: name.clone(),
            model: info.model,
            dims: info.embedding_dim,
            description: req.description,
            if_not_exists: req.if_not_exists,
        };
        let r = self
            .index_rpc(
                "CreateCollection",
                Self::t(self.cfg.timeouts.admin_ms),
                msg,
                |mut c, r| async move { c.create_collection(r).await },
            )
            .await?;
        let c = r
            .collection
            .ok_or_else(|| Error::Internal("CreateCollection answered without one".into()))?;
        self.collections
            .lock()
            .insert(name, (Instant::now(), c.clone()));
        Ok(c)
    }

    /// Drops the cached metadata of collection `name` (its count changed).
    pub(crate) fn forget_collection(&self, name: &str) {
        self.collections.lock().remove(name);
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let name = self.collection_name(name)?;
        self.collections.lock().remove(&name);
        self.index_rpc(
            "DeleteCollection",
            Self::t(self.cfg.timeouts.admin_ms),
            pb::DeleteCollectionRequest { name: name.clone() },
            |mut c, r| async move { c.delete_collection(r).await },
        )
        .await?;
        self.collections.lock().remove(&name);
        Ok(())
    }

    pub async fn clear(&self, name: &str) -> Result<u64> {
        let name = self.collection_name(name)?;
        let r = self
            .index_rpc(
                "Clear",
                Self::t(self.cfg.timeouts.admin_ms),
                pb::ClearRequest {
                    collection: name.clone(),
                },
                |mut c, r| async move { c.clear(r).await },
            )
            .await?;
        self.collections.lock().remove(&name);
        Ok(r.removed)
    }

    pub async fn stats(&self, name: &str) -> Result<pb::StatsResponse> {
        let name = self.collection_name(name)?;
        let mut r = self
            .index_rpc(
                "Stats",
                Self::t(self.cfg.timeouts.admin_ms),
                pb::StatsRequest { collection: name },
                |mut c, r| async move { c.stats(r).await },
            )
            .await?;
        let model = r.collection.as_ref().and_then(|c| c.model.clone());
        if let Some(names) = self.class_names(model.as_ref()).await {
            for p in &mut r.partitions {
                if p.class_name.is_empty() {
                    if let Some(n) = usize::try_from(p.class_index)
                        .ok()
                        .and_then(|i| names.get(i))
                    {
                        p.class_name.clone_from(n);
                    }
                }
            }
        }
        Ok(r)
    }

    pub async fn thumbnail(&self, collection: &str, id: u64) -> Result<Vec<u8>> {
        let name = self.collection_name(collection)?;
        let msg = pb::GetImageRequest {
            collection: name,
            id,
            include_thumbnail: true,
            ..Default::default()
        };
        self.get_image(msg, Self::t(self.cfg.timeouts.admin_ms))
            .await
            .map(|i| i.thumbnail)
            .and_then(|t| {
                (!t.is_empty())
                    .then_some(t)
                    .ok_or_else(|| Error::NotFound(format!("image {id} has no thumbnail")))
            })
    }

    async fn get_image(
        &self,
        msg: pb::GetImageRequest,
        timeout: Duration,
    ) -> Result<pb::ImageRecord> {
        let (collection, id) = (msg.collection.clone(), msg.id);
        self.index_rpc("GetImage", timeout, msg, |mut c, r| async move {
            c.get_image(r).await
        })
        .await?
        .image
        .ok_or_else(|| Error::NotFound(format!("no image {id} in collection {collection:?}")))
    }

    // ----- search ------------------------------------------------------------

    #[tracing::instrument(name = "gateway.search", skip_all)]
    pub async fn search(&self, req: pb::SearchRequest) -> Result<pb::SearchResponse> {
        let started = Instant::now();
        let collection = self.collection_name(&req.collection)?;
        let top_k = match req.top_k {
            0 => 20,
            k if k as usize > self.cfg.limits.max_top_k => {
                return Err(Error::InvalidArgument(format!(
                    "top_k {k} is over the limit of {}",
                    self.cfg.limits.max_top_k
                )))
            }
            k => k,
        };
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
        let mut exclude_id = 0;
        let mut info = None;
        // The model of an embedded query, sent along so that the index
        // refuses a collection rebuilt for another model meanwhile.
        let mut query_model = None;
        let (coll, vector, predicted_class) = match &query {
            pb::search_request::Query::Image(data) => {
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
                // The collection first: the query is embedded with its model.
                let c = self.collection(&collection).await?;
                let (c, emb, model) = self.embed_query(&collection, c, data).await?;
                query_model = model;
                info = Some(query_info(&emb));
                (c, emb.feature, emb.predicted_class)
            }
            pb::search_request::Query::Stored(s) => {
                let from = if s.collection.trim().is_empty() {
                    collection.clone()
                } else {
                    s.collection.trim().to_string()
                };
                if s.exclude_self && from == collection {
                    exclude_id = s.id;
                }
                let (c, img) = tokio::join!(self.collection(&collection), self.stored(&from, s.id));
                let img = img?;
                (c?, img.feature, img.predicted_class)
            }
            pb::search_request::Query::Vector(v) => {
                if v.values.is_empty() {
                    return Err(Error::InvalidArgument("the query vector is empty".into()));
                }
                (
                    self.collection(&collection).await?,
                    v.values.clone(),
                    v.predicted_class,
                )
            }
        };
        let mut coll = coll;
        let mut vector = vector;
        let mut predicted_class = predicted_class;
        let mut looked_again = false;
        let r = loop {
            if coll.count == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "collection {collection:?} is empty: add images first (Index page, or `cbir index add`)"
                )));
            }
            let msg = pb::IndexSearchRequest {
                collection: collection.clone(),
                vector: vector.clone(),
                predicted_class,
                class_probabilities: Vec::new(),
                top_k,
                mode: mode as i32,
                min_similarity: req.min_similarity,
                exclude_id,
                model: query_model.clone(),
            };
            let searched = self
                .index_rpc(
                    "Search",
                    Self::t(self.cfg.timeouts.search_ms),
                    msg,
                    |mut c, r| async move { c.search(r).await },
                )
                .await;
            match (searched, &query) {
                // The name switched to a rebuild for another model since the
                // collection was cached: embed again with that model, once.
                (Err(Error::FailedPrecondition(e)), pb::search_request::Query::Image(data))
                    if !looked_again =>
                {
                    looked_again = true;
                    let fresh = self.refresh_collection(&collection).await?;
                    if same_model(fresh.model.as_ref(), query_model.as_ref()) {
                        return Err(Error::FailedPrecondition(e));
                    }
                    let (c, emb, model) = self.embed_query(&collection, fresh, data).await?;
                    info = Some(query_info(&emb));
                    (coll, vector, predicted_class, query_model) =
                        (c, emb.feature, emb.predicted_class, model);
                }
                (r, _) => break r?,
            }
        };
        let names = self.class_names(coll.model.as_ref()).await;
        let partition_name = |p: i32| -> String {
            names
                .as_ref()
                .and_then(|n| usize::try_from(p).ok().and_then(|i| n.get(i)))
                .cloned()
                .unwrap_or_else(|| format!("class {p}"))
        };
        let results = r
            .hits
            .into_iter()
            .map(|h| pb::SearchResult {
                id: h.id,
                partition_name: partition_name(h.partition),
                file_name: h.file_name,
                path: h.path,
                label: h.label,
                distance: h.distance,
                similarity: h.similarity,
                partition: h.partition,
            })
            .collect();
        Ok(pb::SearchResponse {
            results,
            query: info,
            stats: r.stats,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
            collection,
            mode: if r.mode == 0 { mode as i32 } else { r.mode },
        })
    }

    /// Embeds a query image for collection `c` (as cached) with its model.
    /// When the inference service answers with another model, the
    /// collection is read again once: a rebuild may have switched it to that
    /// model, or to a newer one to embed with.
    async fn embed_query(
        &self,
        collection: &str,
        mut c: pb::Collection,
        data: &[u8],
    ) -> Result<(pb::Collection, pb::Embedding, Option<pb::ModelRef>)> {
        let mut looked_again = false;
        loop {
            let (emb, model) = self.embed_one(data.to_vec(), c.model.clone()).await?;
            if same_model(c.model.as_ref(), model.as_ref()) {
                return Ok((c, emb, model));
            }
            if !looked_again {
                looked_again = true;
                let fresh = self.refresh_collection(collection).await?;
                let changed = !same_model(fresh.model.as_ref(), c.model.as_ref());
                c = fresh;
                if same_model(c.model.as_ref(), model.as_ref()) {
                    return Ok((c, emb, model));
                }
                if changed {
                    continue;
                }
            }
            return Err(Error::FailedPrecondition(format!(
                "collection {collection:?} holds features of model {}, but the inference service serves {}: rebuild the collection for that model, or search another collection",
                model_label(c.model.as_ref()),
                model_label(model.as_ref())
            )));
        }
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
