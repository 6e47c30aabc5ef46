//! Collections no name points at yet: the targets of rebuilds, and the
//! switch of a name to one of them.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Collection, Index, Record, LOAD_PAGE};
use crate::error::Result;

impl Index {
    /// A collection no name points at yet (the target of a rebuild).
    pub async fn create_physical(
        &self,
        physical: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
    ) -> Result<Arc<Collection>> {
        let _catalog = self.creating.lock().await;
        let row = self
            .store
            .create_collection("", physical, model_name, model_version, dims, description)
            .await?;
        let coll = Arc::new(Collection::new(row, self.new_mem(dims as usize)));
        self.catalog
            .write()
            .collections
            .insert(coll.row.id, coll.clone());
        Ok(coll)
    }

    /// Drops a physical collection (and any name pointing at it).
    pub async fn drop_physical(&self, coll: &Arc<Collection>) -> Result<()> {
        let _catalog = self.creating.lock().await;
        self.drop_collection(coll).await
    }

    /// The images of `coll`: in memory, or on a sharded index (which holds
    /// only its own partitions) in the database. A rebuild re-embeds them.
    pub(crate) async fn stored_ids(&self, coll: &Collection) -> Result<Vec<u64>> {
        let mut ids = if self.shard.is_whole() {
            coll.mem.read().ids()
        } else {
            let mut all = Vec::new();
            self.each_stored(coll, |i| all.push(i.id)).await?;
            all
        };
        ids.sort_unstable();
        Ok(ids)
    }

    /// Calls `f` with every image of `coll` in the database, by id.
    async fn each_stored(
        &self,
        coll: &Collection,
        mut f: impl FnMut(crate::store::LoadedImage),
    ) -> Result<()> {
        let mut after = 0;
        loop {
            let page = self.store.load_page(coll.row.id, after, LOAD_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let full = page.len() as u64 == LOAD_PAGE;
            page.into_iter().for_each(&mut f);
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// How many images `coll` holds (see [`stored_ids`](Self::stored_ids)).
    pub(crate) async fn stored_count(&self, coll: &Collection) -> Result<u64> {
        if self.shard.is_whole() {
            Ok(coll.mem.read().len() as u64)
        } else {
            self.store.count(coll.row.id).await
        }
    }

    /// Finishes a rebuild: with writes to `old` held, copies what changed
    /// since `copied` (old id -> new id) was taken, then points `alias` at
    /// `new` in one database transaction and in memory. Searches see either
    /// the old collection or the complete new one.
    pub async fn finish_rebuild<F, Fut>(
        &self,
        alias: &str,
        old: &Arc<Collection>,
        new: &Arc<Collection>,
        copied: &mut HashMap<u64, u64>,
        copy_missing: F,
    ) -> Result<()>
    where
        F: FnOnce(Vec<u64>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(u64, Record)>>>,
    {
        let _catalog = self.creating.lock().await;
        let _w = old.write.lock().await;
        // What the old collection holds now, read once: the images added
        // while the rebuild ran (missing), and on a sharded index (other
        // shards' writes land in the database) the live ones and their
        // labels.
        let mut missing = Vec::new();
        let mut sharded = (!self.shard.is_whole()).then(HashMap::new);
        self.each_stored(old, |i| {
            if !copied.contains_key(&i.id) {
                missing.push(i.id);
            }
            if let Some(s) = sharded.as_mut() {
                s.insert(i.id, i.label);
            }
        })
        .await?;
        let live: Vec<u64> = {
            let mem = old.mem.read();
            let mut ids: Vec<u64> = copied
                .keys()
                .copied()
                .filter(|id| match &sharded {
                    Some(s) => s.contains_key(id),
                    None => mem.contains(*id),
                })
                .collect();
            ids.sort_unstable();
            ids
        };
        // Deleted from the old collection while the rebuild ran.
        let gone: Vec<u64> = copied
            .iter()
            .filter(|(old_id, _)| live.binary_search(old_id).is_err())
            .map(|(_, new_id)| *new_id)
            .collect();
        if !missing.is_empty() {
            let records = copy_missing(missing).await?;
            for chunk in records.chunks(self.limits.max_records_per_upsert) {
                let (ids, recs): (Vec<u64>, Vec<Record>) = chunk.iter().cloned().unzip();
                let mut recs = recs;
                for r in &mut recs {
                    self.validate(new, r)?;
                }
                let _nw = new.write.lock().await;
                let out = self.upsert_locked(new, recs, false).await?;
                for (old_id, o) in ids.into_iter().zip(out) {
                    copied.insert(old_id, o.id);
                }
            }
        }
        if !gone.is_empty() {
            let _nw = new.write.lock().await;
            self.delete_locked(new, &gone).await?;
        }
        self.carry_labels(old, new, &live, copied, sharded.as_ref())
            .await?;
        // Images added early in the rebuild were augmented from fewer
        // neighbours than the collection holds now: all are refreshed.
        new.mem.write().mark_all_stale();
        self.store.switch_alias(alias, new.row.id).await?;
        old.retire();
        self.catalog
            .write()
            .aliases
            .insert(alias.to_string(), new.row.id);
        Ok(())
    }

    /// Labels set on images of `old` (ids `live`) after the rebuild copied
    /// them: the new collection takes them over. Called with writes to
    /// `old` held.
    async fn carry_labels(
        &self,
        old: &Collection,
        new: &Collection,
        live: &[u64],
        copied: &HashMap<u64, u64>,
        stored: Option<&HashMap<u64, String>>,
    ) -> Result<()> {
        let changed: Vec<(u64, String)> = if let Some(was) = stored {
            // A shard holds only its own partitions of either: the labels
            // from the database (`stored`: the old collection's).
            let mut now = HashMap::new();
            self.each_stored(new, |i| {
                now.insert(i.id, i.label);
            })
            .await?;
            live.iter()
                .filter_map(|id| {
                    let to = *copied.get(id)?;
                    let label = was.get(id)?;
                    (now.get(&to)? != label).then(|| (to, label.clone()))
                })
                .collect()
        } else {
            let (was, now) = (old.mem.read(), new.mem.read());
            live.iter()
                .filter_map(|id| {
                    let to = *copied.get(id)?;
                    let meta = was.meta(*id)?;
                    (now.meta(to)?.label() != meta.label()).then(|| (to, meta.label().to_string()))
                })
                .collect()
        };
        let _nw = new.write.lock().await;
        for (id, label) in changed {
            if self.store.update_label(new.row.id, id, &label).await? {
                new.seen_seq
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                new.mem.write().set_label(id, &label);
            }
        }
        Ok(())
    }
}
