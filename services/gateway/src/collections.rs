//! Collections: their metadata (cached briefly, as every search needs the
//! model a collection is bound to), management calls, thumbnails, and
//! rebuilds for another model with the operations that track them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;

use crate::error::{Error, Result, Upstream};
use crate::gateway::{same_model, Gateway};

/// Collection metadata is cached this long: a search needs the model the
/// collection is bound to, and asking the index every time costs a round trip.
const COLLECTION_TTL: Duration = Duration::from_secs(2);

/// The "model switched, look again once" rule, shared by uploads and
/// searches: an answer computed with another model than the collection's
/// (as cached) may mean that a rebuild switched the collection to that
/// model, or to a newer one, meanwhile. The collection is then read again,
/// once per request.
pub(crate) struct LookAgain<'a> {
    gateway: &'a Gateway,
    collection: &'a str,
    looked: bool,
}

/// What to do after a model mismatch.
pub(crate) enum Next {
    /// The fresh collection is bound to the model that answered: keep the answer.
    Keep,
    /// The fresh collection is bound to another model: try again with it.
    Retry,
    /// Looking again does not help (looked already, or nothing changed).
    GiveUp,
}

impl LookAgain<'_> {
    /// After an answer from `served` (`None` when there is no answer to
    /// keep) that does not match `coll`, which becomes the fresh metadata.
    pub(crate) async fn after_mismatch(
        &mut self,
        coll: &mut pb::Collection,
        served: Option<&pb::ModelRef>,
    ) -> Result<Next> {
        if self.looked {
            return Ok(Next::GiveUp);
        }
        self.looked = true;
        let fresh = self.gateway.refresh_collection(self.collection).await?;
        let changed = !same_model(fresh.model.as_ref(), coll.model.as_ref());
        *coll = fresh;
        Ok(if same_model(coll.model.as_ref(), served) {
            Next::Keep
        } else if changed {
            Next::Retry
        } else {
            Next::GiveUp
        })
    }
}

impl Gateway {
    /// The look-again rule for one request on collection `name`.
    pub(crate) fn look_again<'a>(&'a self, name: &'a str) -> LookAgain<'a> {
        LookAgain {
            gateway: self,
            collection: name,
            looked: false,
        }
    }

    pub async fn list_collections(&self) -> Result<Vec<pb::Collection>> {
        self.list_collections_within(self.admin_timeout()).await
    }

    /// A cheap call that shows the index service answers.
    pub async fn ping_index(&self, timeout: Duration) -> Result<String> {
        let n = self.list_collections_within(timeout).await?.len();
        Ok(format!("{n} collections"))
    }

    async fn list_collections_within(&self, timeout: Duration) -> Result<Vec<pb::Collection>> {
        self.index_list_collections(timeout).await
    }

    pub(crate) async fn fetch_collection(&self, name: &str) -> Result<pb::Collection> {
        let c = self
            .index_get_collection(name, self.admin_timeout())
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!(
                    "no collection {name:?}: create it first (Index page, or `cbir index add --collection {name} FOLDER`)"
                )),
                e => e,
            })?;
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
    pub(crate) async fn collection(&self, name: &str) -> Result<pb::Collection> {
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
            .model_info(self.admin_timeout())
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
        let c = self
            .index_create_collection(msg, self.admin_timeout())
            .await?;
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
        self.index_delete_collection(&name, self.admin_timeout())
            .await?;
        self.collections.lock().remove(&name);
        Ok(())
    }

    pub async fn clear(&self, name: &str) -> Result<u64> {
        let name = self.collection_name(name)?;
        let removed = self.index_clear(&name, self.admin_timeout()).await?;
        self.collections.lock().remove(&name);
        Ok(removed)
    }

    pub async fn stats(&self, name: &str) -> Result<pb::StatsResponse> {
        let name = self.collection_name(name)?;
        let mut r = self.index_stats(&name, self.admin_timeout()).await?;
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
        self.get_image(msg, self.admin_timeout())
            .await
            .map(|i| i.thumbnail)
            .and_then(|t| {
                (!t.is_empty())
                    .then_some(t)
                    .ok_or_else(|| Error::NotFound(format!("image {id} has no thumbnail")))
            })
    }

    pub(crate) async fn get_image(
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

    /// Class names of the served model, to name partitions; cached per model.
    pub(crate) async fn class_names(
        &self,
        model: Option<&pb::ModelRef>,
    ) -> Option<Arc<Vec<String>>> {
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
                self.admin_timeout(),
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

    pub async fn operation(&self, id: &str) -> Result<pb::OperationProgress> {
        let (shard, inner) = self.index.parse_operation_id(id)?;
        let mut stream = self
            .index_on(
                shard,
                "WatchOperation",
                self.admin_timeout(),
                pb::WatchOperationRequest {
                    operation_id: inner.to_string(),
                },
                |mut c, r| async move { c.watch_operation(r).await },
            )
            .await?;
        stream
            .message()
            .await
            .map_err(|s| Error::upstream(Upstream::Index, s))?
            .ok_or_else(|| Error::NotFound(format!("no operation {id:?}")))
    }

    /// Re-embeds a collection with the model inference serves now.
    pub async fn rebuild(&self, collection: &str) -> Result<String> {
        // Shard 0 re-embeds every image (from the database on a sharded
        // index); the other shards load the new collection as they follow.
        let info = self.model_info(self.admin_timeout()).await?;
        let model = info.info.and_then(|i| i.model).ok_or_else(|| {
            Error::Internal("the inference service did not name its model".into())
        })?;
        let r = self
            .index_on(
                0,
                "Rebuild",
                self.admin_timeout(),
                pb::RebuildRequest {
                    collection: collection.to_string(),
                    model: Some(model),
                },
                |mut c, r| async move { c.rebuild(r).await },
            )
            .await?;
        Ok(self.index.operation_id(0, r.operation_id))
    }

    /// Recomputes every augmented vector of a collection (refined
    /// ranking) on the index replica of each shard that answers; the
    /// operation id of the first shard's.
    pub async fn refine(&self, collection: &str) -> Result<String> {
        let name = self.collection_name(collection)?;
        let r = self
            .index_each(
                "RefineCollection",
                self.admin_timeout(),
                pb::RefineCollectionRequest { collection: name },
                |mut c, r| async move { c.refine_collection(r).await },
            )
            .await?;
        let first = r.into_iter().next().unwrap_or_default();
        Ok(self.index.operation_id(0, first.operation_id))
    }
}
