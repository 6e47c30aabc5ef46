//! Loading a collection from the database into memory: parallel readers
//! over disjoint id ranges, each prefetching its next page while the last
//! one is decoded.

use std::sync::Arc;

use super::{Collection, Index, LOAD_PAGE, LOAD_READERS};

/// Pages a loading reader decodes between two `release_freed_memory`.
const TRIM_EVERY_PAGES: usize = 16;
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
        // Each reader's share of every partition this shard holds, with a
        // margin: ids and classes are not correlated, so a share is close
        // to the count over the readers.
        let shares: Arc<Vec<(i32, usize)>> = Arc::new(
            self.store
                .class_counts(row.id)
                .await?
                .into_iter()
                .filter(|(class, _)| self.shard.owns(*class))
                .map(|(class, n)| {
                    let share = n as usize / LOAD_READERS;
                    (class, share + share / 20 + 16)
                })
                .collect(),
        );
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
            let (storage, shard, shares) = (self.storage, self.shard, shares.clone());
            parts.push(tokio::spawn(async move {
                let mut part = MemIndex::with_storage(dims, storage);
                for &(class, n) in shares.iter() {
                    part.reserve_class(class, n);
                }
                let mut after = start;
                let mut pages = 0usize;
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
                    pages += 1;
                    let trim = pages.is_multiple_of(TRIM_EVERY_PAGES);
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
                                meta: Meta::new(
                                    &img.content_hash,
                                    &img.file_name,
                                    &img.path,
                                    &img.label,
                                    img.created_at_ms,
                                ),
                            })
                            .collect();
                        part.upsert(&entries);
                        drop(entries);
                        if trim {
                            release_freed_memory();
                        }
                        part
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("load task: {e}")))?;
                }
                // The part without its spare room before it is merged.
                tokio::task::spawn_blocking(move || {
                    part.shrink_to_fit();
                    part
                })
                .await
                .map_err(|e| Error::Internal(format!("load task: {e}")))
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
            mem.shrink_to_fit();
            // Every augmented vector is computed by the next refresh, from
            // all the others; until then refined searches use raw vectors.
            mem.set_refine(refine);
            mem.mark_all_stale();
            mem
        })
        .await
        .map_err(|e| Error::Internal(format!("load task: {e}")))?;
        release_freed_memory();
        Ok(Arc::new(Collection::new(row, mem)))
    }
}

/// Hands the heap's free pages back to the system. A load frees the f32
/// pages it read (gigabytes) among the small allocations it keeps, which
/// glibc's allocator would otherwise hold as resident memory.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
