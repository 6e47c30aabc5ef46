//! Loading a collection from the database into memory: parallel readers
//! over disjoint id ranges, each prefetching its next page while the last
//! one is decoded.

use std::sync::Arc;

use super::{Collection, Index, LOAD_PAGE, LOAD_READERS};
use crate::error::{Error, Result};
use crate::mem::{Entry, MemIndex, Meta};
use crate::store::CollectionRow;

impl Index {
    pub(super) async fn load_collection(&self, row: CollectionRow) -> Result<Arc<Collection>> {
        let dims = row.dims as usize;
        let mut mem = self.new_mem(dims);
        let Some((lo, hi)) = self.store.id_range(row.id).await? else {
            return Ok(Arc::new(Collection::new(row, mem)));
        };
        // Readers over disjoint id ranges run in parallel (one connection
        // each), each decoding into its own index; the parts are merged.
        let readers = LOAD_READERS as u64;
        let span = (hi - lo) / readers + 1;
        let mut parts = Vec::new();
        for r in 0..readers {
            let start = lo - 1 + r * span;
            let upto = (start + span).min(hi);
            if start >= upto {
                continue;
            }
            let store = self.store.clone();
            let id = row.id;
            let (storage, shard) = (self.storage, self.shard);
            parts.push(tokio::spawn(async move {
                let mut part = MemIndex::with_storage(dims, storage);
                let mut after = start;
                let mut pending = Some(tokio::spawn({
                    let store = store.clone();
                    async move { store.load_range(id, after, upto, LOAD_PAGE).await }
                }));
                while let Some(task) = pending.take() {
                    let page = task
                        .await
                        .map_err(|e| Error::Internal(format!("load task: {e}")))??;
                    let Some(last) = page.last() else { break };
                    after = last.id;
                    if page.len() as u64 == LOAD_PAGE {
                        let store = store.clone();
                        pending = Some(tokio::spawn(async move {
                            store.load_range(id, after, upto, LOAD_PAGE).await
                        }));
                    }
                    part = tokio::task::spawn_blocking(move || {
                        let entries: Vec<Entry> = page
                            .into_iter()
                            .filter(|img| {
                                img.feature.len() == dims && shard.owns(img.predicted_class)
                            })
                            .map(|img| Entry {
                                id: img.id,
                                class: img.predicted_class,
                                feature: img.feature,
                                meta: Arc::new(Meta {
                                    content_hash: img.content_hash,
                                    file_name: img.file_name,
                                    path: img.path,
                                    label: img.label,
                                    created_at_ms: img.created_at_ms,
                                }),
                            })
                            .collect();
                        part.upsert(&entries);
                        part
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("load task: {e}")))?;
                }
                Ok::<MemIndex, Error>(part)
            }));
        }
        for p in parts {
            let part = p
                .await
                .map_err(|e| Error::Internal(format!("load task: {e}")))??;
            // The first part becomes the index; later ones are appended.
            if mem.is_empty() {
                mem = part;
                continue;
            }
            mem = tokio::task::spawn_blocking(move || {
                mem.merge(part);
                mem
            })
            .await
            .map_err(|e| Error::Internal(format!("load task: {e}")))?;
        }
        let refine = self.refine;
        let mem = tokio::task::spawn_blocking(move || {
            mem.refresh();
            // Every augmented vector is computed by the next refresh, from
            // all the others; until then refined searches use raw vectors.
            mem.set_refine(refine);
            mem.mark_all_stale();
            mem
        })
        .await
        .map_err(|e| Error::Internal(format!("load task: {e}")))?;
        Ok(Arc::new(Collection::new(row, mem)))
    }
}
