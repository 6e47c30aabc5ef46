//! Near-duplicates: starting a run on the index, its groups, and following
//! operations (near-duplicate runs and rebuilds) to their end.

use std::time::Duration;

use cbir_api::v1 as pb;
use futures::Stream;

use crate::error::{Error, Result, Upstream};
use crate::gateway::Gateway;

/// One group member as users see it: the image and its similarity to the
/// group's first (oldest) member.
pub struct DuplicateMember {
    pub image: pb::StoredImage,
    pub similarity: f32,
}

/// The latest run of a collection and its groups, largest first.
pub struct DuplicateListing {
    pub operation: Option<pb::OperationProgress>,
    pub min_similarity: f32,
    pub groups: Vec<Vec<DuplicateMember>>,
    pub total_groups: u32,
}

fn finished(p: &pb::OperationProgress) -> bool {
    p.state >= pb::operation_progress::State::Succeeded as i32
}

impl Gateway {
    /// Starts grouping the near-duplicates of `collection`
    /// (`min_similarity` 0: the index's default); the operation id.
    pub async fn find_duplicates(&self, collection: &str, min_similarity: f32) -> Result<String> {
        let name = self.collection_name(collection)?;
        if !(min_similarity.is_finite() && (0.0..=1.0).contains(&min_similarity)) {
            return Err(Error::InvalidArgument(format!(
                "min_similarity must be between 0 and 1 (0 or none takes the default), got {min_similarity}"
            )));
        }
        // A run keeps one state per collection in the shared database: on
        // a sharded index shard 0 runs it over every shard's images (it
        // needs its peers, and says so without them).
        let r = self
            .index_on(
                0,
                "FindDuplicates",
                self.admin_timeout(),
                pb::FindDuplicatesRequest {
                    collection: name,
                    min_similarity,
                },
                |mut c, r| async move { c.find_duplicates(r).await },
            )
            .await?;
        Ok(self.index.operation_id(0, r.operation_id))
    }

    /// The groups of the latest run, as the index answers them
    /// (thumbnails included).
    pub async fn list_duplicates(&self, collection: &str) -> Result<pb::ListDuplicatesResponse> {
        let name = self.collection_name(collection)?;
        self.index_rpc(
            "ListDuplicates",
            self.admin_timeout(),
            pb::ListDuplicatesRequest { collection: name },
            |mut c, r| async move { c.list_duplicates(r).await },
        )
        .await
    }

    /// The groups of the latest run with class names, without thumbnails
    /// (the REST answer links them).
    pub async fn duplicates(&self, collection: &str) -> Result<DuplicateListing> {
        let name = self.collection_name(collection)?;
        let r = self.list_duplicates(&name).await?;
        let coll = self.collection(&name).await?;
        let names = self.class_names(coll.model.as_ref()).await;
        let class_name = |c: i32| {
            names
                .as_ref()
                .and_then(|n| n.get(usize::try_from(c).ok()?).cloned())
                .unwrap_or_default()
        };
        let groups = r
            .groups
            .into_iter()
            .map(|g| {
                g.members
                    .into_iter()
                    .filter_map(|m| {
                        let i = m.image?;
                        Some(DuplicateMember {
                            similarity: m.similarity,
                            image: pb::StoredImage {
                                id: i.id,
                                file_name: i.file_name,
                                path: i.path,
                                label: i.label,
                                predicted_class: i.predicted_class,
                                predicted_name: class_name(i.predicted_class),
                                created_at_ms: i.created_at_ms,
                                content_hash: i.content_hash,
                                collection: name.clone(),
                                has_source: i.has_source,
                                ..Default::default()
                            },
                        })
                    })
                    .collect()
            })
            .collect();
        Ok(DuplicateListing {
            operation: r.operation,
            min_similarity: r.min_similarity,
            groups,
            total_groups: r.total_groups,
        })
    }

    /// An operation's progress now, then each change until it ends. Each
    /// call to the index is bounded by the bulk deadline; a watch that
    /// outlives it picks up again (on any replica: runs are in the
    /// database, rebuilds answer from the replica running them).
    pub fn watch_operation(
        self: &std::sync::Arc<Self>,
        id: String,
    ) -> impl Stream<Item = Result<pb::OperationProgress>> + Send + 'static {
        let gw = self.clone();
        async_stream::stream! {
            let mut last: Option<pb::OperationProgress> = None;
            let (shard, inner) = match gw.index.parse_operation_id(&id) {
                Ok((shard, inner)) => (shard, inner.to_string()),
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            loop {
                let opened = gw
                    .index_on(
                        shard,
                        "WatchOperation",
                        Gateway::t(gw.cfg.timeouts.bulk_ms),
                        pb::WatchOperationRequest { operation_id: inner.clone() },
                        |mut c, r| async move { c.watch_operation(r).await },
                    )
                    .await;
                let mut stream = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(p)) => {
                            let end = finished(&p);
                            if last.as_ref() != Some(&p) {
                                last = Some(p.clone());
                                yield Ok(p);
                            }
                            if end {
                                return;
                            }
                        }
                        // The index ended the stream before the operation
                        // ended (its deadline): watch again.
                        Ok(None) => break,
                        Err(s) => {
                            let e = Error::upstream(Upstream::Index, s);
                            if matches!(e, Error::DeadlineExceeded { .. }) && last.is_some() {
                                break;
                            }
                            yield Err(e);
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
