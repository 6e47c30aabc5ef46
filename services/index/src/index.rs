//! The index domain: named collections (aliases of physical collections),
//! write-through upserts (database first, then memory) and searches from
//! memory. No tonic types here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

mod browse;
mod load;
mod physical;
mod search;
mod transfer;
mod upkeep;
mod write;

use crate::error::{Error, Result};
use crate::mem::{Expansion, Filter, Hit, MemIndex, Mode, ProbeRule, Refine, Stats, Storage, Term};
use crate::store::{CollectionRow, Store, StoredImage};
pub use cbir_common::shard::Shard;

pub use browse::{LabelCount, ListRequest};
pub use transfer::{BackupCopy, Export, EXPORT_VERSION};
pub(crate) use write::augment_now;

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_records_per_upsert: usize,
    pub max_top_k: usize,
    pub max_thumbnail_bytes: usize,
    pub max_source_bytes: usize,
    pub max_name_len: usize,
    pub max_path_len: usize,
    pub max_label_len: usize,
    pub max_dims: u32,
    /// Queries in one SearchBatch call.
    pub max_batch_queries: usize,
    /// Labels in each list of a search filter (in, not in).
    pub max_filter_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_records_per_upsert: 1000,
            max_top_k: 10_000,
            max_thumbnail_bytes: 1 << 20,
            max_source_bytes: 16 << 20,
            max_name_len: cbir_common::records::DEFAULT_TEXT_LIMITS.max_file_name,
            max_path_len: cbir_common::records::DEFAULT_TEXT_LIMITS.max_path,
            max_label_len: cbir_common::records::DEFAULT_TEXT_LIMITS.max_label,
            max_dims: 8192,
            max_batch_queries: 64,
            max_filter_labels: 100,
        }
    }
}

pub struct Collection {
    pub row: CollectionRow,
    pub mem: RwLock<MemIndex>,
    /// Serialises writers so that memory applies commits in commit order.
    write: tokio::sync::Mutex<()>,
    /// The collection's write counter in the database that memory reflects
    /// (replicas reload a collection whose counter moved).
    seen_seq: std::sync::atomic::AtomicI64,
    /// Set (under `write`) once no name may write here any more: the
    /// collection was deleted, or a rebuild replaced it. A writer that
    /// waited for `write` looks the name up again instead of writing into
    /// a collection about to be dropped.
    retired: std::sync::atomic::AtomicBool,
    /// While the follow loop reloads the collection: the marks peer shards
    /// sent meanwhile (`MarkStale`), applied again to the reloaded memory,
    /// which was built from a copy that may predate them.
    reloading: parking_lot::Mutex<Option<Vec<Change>>>,
}

/// An image another shard added or deleted, with its raw neighbours here.
pub(crate) type Change = (u64, Vec<(u64, f32)>);

impl Collection {
    fn new(row: CollectionRow, mem: MemIndex) -> Self {
        Self {
            row,
            mem: RwLock::new(mem),
            write: tokio::sync::Mutex::new(()),
            seen_seq: std::sync::atomic::AtomicI64::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
            reloading: parking_lot::Mutex::new(None),
        }
    }

    /// True once no name may write here any more (deleted or replaced).
    pub fn is_retired(&self) -> bool {
        self.retired()
    }

    fn retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Catalog {
    aliases: HashMap<String, i64>,
    collections: HashMap<i64, Arc<Collection>>,
}

pub struct Index {
    store: Store,
    catalog: RwLock<Catalog>,
    pub limits: Limits,
    pub probe: ProbeRule,
    pub default_mode: Mode,
    /// Parameters of refined ranking, the same for every collection.
    pub refine: Refine,
    /// What memory keeps per vector.
    pub storage: Storage,
    /// The class partitions this service holds in memory (all unless
    /// sharded); the database holds every partition.
    pub shard: Shard,
    /// Changes to the set of collections and names, one at a time: the
    /// existence check and the insert of a create must not interleave, and
    /// the follow loop must not sync the catalog from a snapshot taken
    /// before a local change. Taken before any collection's `write`.
    creating: tokio::sync::Mutex<()>,
    /// Exports and backups running at once.
    transfers: transfer::Transfers,
    /// The other shards, when augmented vectors sum neighbours across
    /// shards (`peers` in the config); None: within this shard's images.
    pub peers: Option<Arc<crate::peers::Peers>>,
}

/// A record to upsert, as the API gives it.
#[derive(Debug, Clone)]
pub struct Record {
    pub content_hash: String,
    pub file_name: String,
    pub path: String,
    pub label: String,
    pub predicted_class: i32,
    pub feature: Vec<f32>,
    pub thumbnail: Vec<u8>,
    pub source: Vec<u8>,
}

pub struct SearchRequest {
    pub collection: String,
    pub vector: Vec<f32>,
    pub predicted_class: Option<i32>,
    pub top_k: usize,
    pub mode: Option<Mode>,
    pub min_similarity: f32,
    pub exclude_id: Option<u64>,
    /// `(name, version)` of the model that made `vector`: a collection bound
    /// to another model refuses the search (its name may have switched to a
    /// rebuild for a new model since the caller looked).
    pub model: Option<(String, String)>,
    /// Only images it admits are ranked.
    pub filter: Filter,
    /// Best hits to skip (paging): the answer is hits offset..offset+top_k
    /// of the whole ranking.
    pub offset: usize,
    /// Where a refined search takes the images that expand its query: its
    /// own, or on a sharded index those every shard found (the gateway
    /// gathers them first).
    pub expansion: Expansion,
}

pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Hits exist after these.
    pub has_more: bool,
    pub stats: Stats,
    pub mode: Mode,
    pub took_us: u64,
    /// The expansion terms a refined search asked only for them answers.
    pub terms: Vec<Term>,
    /// The number of terms that expand a query here (`refined.qe_k`).
    pub expansion_k: usize,
}

pub struct PartitionStat {
    pub class: i32,
    pub count: u64,
    pub bytes: u64,
}

pub struct CollectionStats {
    pub row: CollectionRow,
    pub alias: String,
    pub count: u64,
    pub bytes: u64,
    pub partitions: Vec<PartitionStat>,
}

/// How this service holds vectors: what memory keeps of each, and which
/// class partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub storage: Storage,
    pub shard: Shard,
}

/// Rows per page when loading a collection into memory.
const LOAD_PAGE: u64 = 5_000;
/// Parallel readers when loading a collection.
const LOAD_READERS: usize = 2;

/// Longest description, model name or model version of a collection.
const MAX_TEXT_LEN: usize = 4096;

fn valid_name(name: &str) -> Result<()> {
    cbir_api::names::check_new(name).map_err(Error::InvalidArgument)
}

impl Index {
    /// Loads every collection from the store into memory.
    pub async fn open(
        store: Store,
        limits: Limits,
        probe: ProbeRule,
        refine: Refine,
        layout: Layout,
    ) -> Result<Self> {
        layout.shard.check().map_err(Error::Config)?;
        let index = Self {
            store,
            catalog: RwLock::new(Catalog::default()),
            limits,
            probe,
            default_mode: Mode::Refined,
            refine,
            storage: layout.storage,
            shard: layout.shard,
            creating: tokio::sync::Mutex::new(()),
            transfers: transfer::Transfers::default(),
            peers: None,
        };
        let started = Instant::now();
        // Counters first: a write during the load shows as a moved counter.
        let seqs = index.store.write_seqs().await?;
        let rows = index.store.collections().await?;
        let aliases = index.store.aliases().await?;
        let mut total = 0;
        for row in rows {
            let seq = seqs.get(&row.id).copied().unwrap_or(0);
            let coll = index.load_collection(row).await?;
            coll.seen_seq
                .store(seq, std::sync::atomic::Ordering::SeqCst);
            total += coll.mem.read().len();
            index.catalog.write().collections.insert(coll.row.id, coll);
        }
        index.catalog.write().aliases = aliases;
        tracing::info!(
            vectors = total,
            took_ms = started.elapsed().as_millis() as u64,
            "index loaded from the database"
        );
        Ok(index)
    }

    /// Brings memory up to date with what other replicas on the same
    /// database committed: new collections are loaded, collections whose
    /// write counter moved are reloaded (then swapped in at once), deleted
    /// ones dropped, aliases replaced.
    pub async fn follow_once(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let _catalog = self.creating.lock().await;
        let seqs = self.store.write_seqs().await?;
        let rows = self.store.collections().await?;
        let aliases = self.store.aliases().await?;
        let live: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
        for row in rows {
            let seq = seqs.get(&row.id).copied().unwrap_or(0);
            let known = self.catalog.read().collections.get(&row.id).cloned();
            match known {
                None => {
                    let coll = self.load_collection(row).await?;
                    coll.seen_seq.store(seq, Ordering::SeqCst);
                    tracing::info!(collection = %coll.row.name, vectors = coll.mem.read().len(), "loaded a collection another replica created");
                    self.catalog.write().collections.insert(coll.row.id, coll);
                }
                Some(coll) if coll.seen_seq.load(Ordering::SeqCst) != seq => {
                    let _w = coll.write.lock().await;
                    // Our own write may have been the change.
                    if coll.seen_seq.load(Ordering::SeqCst) == seq {
                        continue;
                    }
                    *coll.reloading.lock() = Some(Vec::new());
                    let fresh = self.load_collection(coll.row.clone()).await;
                    let fresh = match fresh {
                        Ok(f) => f,
                        Err(e) => {
                            *coll.reloading.lock() = None;
                            return Err(e);
                        }
                    };
                    let dims = coll.row.dims as usize;
                    let mut mem = std::mem::replace(&mut *fresh.mem.write(), self.new_mem(dims));
                    let n = mem.len();
                    // Augmented vectors of unchanged images carry over; only
                    // what changed waits for its neighbours.
                    let (c, rule) = (coll.clone(), self.probe);
                    let mem = tokio::task::spawn_blocking(move || {
                        let old = c.mem.read();
                        let removed: Vec<(u64, Vec<(u64, f32)>)> = old
                            .ids()
                            .into_iter()
                            .filter(|id| !mem.contains(*id))
                            .map(|id| (id, old.affected_by_removal(id, rule)))
                            .collect();
                        mem.adopt_augmented(&old, &removed);
                        mem
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("reload task: {e}")));
                    let mut marks = coll.reloading.lock();
                    let mut mem = match mem {
                        Ok(mem) => mem,
                        Err(e) => {
                            *marks = None;
                            return Err(e);
                        }
                    };
                    for (id, near) in marks.take().unwrap_or_default() {
                        mem.mark_changed_elsewhere(id, &near);
                    }
                    *coll.mem.write() = mem;
                    drop(marks);
                    coll.seen_seq.store(seq, Ordering::SeqCst);
                    tracing::info!(collection = %coll.row.name, vectors = n, "reloaded a collection other replicas changed");
                }
                Some(_) => {}
            }
        }
        let mut cat = self.catalog.write();
        cat.collections.retain(|id, _| live.contains(id));
        cat.aliases = aliases;
        Ok(())
    }

    /// Takes the database's names of collections this service has loaded
    /// (the follow loop takes all of them, and loads new collections);
    /// whether one changed.
    pub(crate) async fn sync_aliases(&self) -> Result<bool> {
        let aliases = self.store.aliases().await?;
        let mut cat = self.catalog.write();
        let mut changed = false;
        for (alias, id) in aliases {
            if cat.collections.contains_key(&id) && cat.aliases.get(&alias) != Some(&id) {
                cat.aliases.insert(alias, id);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// An empty in-memory index with this service's ranking parameters.
    pub(crate) fn new_mem(&self, dims: usize) -> MemIndex {
        let mut m = MemIndex::with_storage(dims, self.storage);
        m.set_refine(self.refine);
        m
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The physical collection a name points at.
    pub fn resolve(&self, name: &str) -> Result<Arc<Collection>> {
        // A name of any length may arrive; none longer than the limit exists.
        cbir_api::names::check_lookup(name).map_err(Error::InvalidArgument)?;
        let cat = self.catalog.read();
        cat.aliases
            .get(name)
            .and_then(|id| cat.collections.get(id))
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "collection {} does not exist: create it first",
                    cbir_api::names::quoted(name)
                ))
            })
    }

    /// What a new collection must be: a valid name, a named model, bounded
    /// texts and dimensions.
    fn check_new_collection(
        &self,
        name: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
    ) -> Result<()> {
        valid_name(name)?;
        if model_name.trim().is_empty() || model_version.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a collection needs its model's name and version".into(),
            ));
        }
        for (what, len) in [
            ("description", description.len()),
            ("model name", model_name.len()),
            ("model version", model_version.len()),
        ] {
            if len > MAX_TEXT_LEN {
                return Err(Error::InvalidArgument(format!(
                    "the collection's {what} is {len} bytes, the limit is {MAX_TEXT_LEN}"
                )));
            }
        }
        if dims == 0 || dims > self.limits.max_dims {
            return Err(Error::InvalidArgument(format!(
                "dims must be 1 to {}, got {dims}",
                self.limits.max_dims
            )));
        }
        Ok(())
    }

    pub async fn create_collection(
        &self,
        name: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
        if_not_exists: bool,
    ) -> Result<Arc<Collection>> {
        self.check_new_collection(name, model_name, model_version, dims, description)?;
        let _creating = self.creating.lock().await;
        if self.resolve(name).is_err() {
            self.adopt(name).await?;
        }
        if let Ok(existing) = self.resolve(name) {
            let same = existing.row.model_name == model_name
                && existing.row.model_version == model_version
                && existing.row.dims == dims;
            return if if_not_exists && same {
                Ok(existing)
            } else {
                Err(Error::AlreadyExists(format!(
                    "collection {name:?} exists already (model {} {}, {} dims)",
                    existing.row.model_name, existing.row.model_version, existing.row.dims
                )))
            };
        }
        let row = self
            .store
            .create_collection(name, name, model_name, model_version, dims, description)
            .await?;
        let coll = Arc::new(Collection::new(row, self.new_mem(dims as usize)));
        let mut cat = self.catalog.write();
        cat.collections.insert(coll.row.id, coll.clone());
        cat.aliases.insert(name.to_string(), coll.row.id);
        Ok(coll)
    }

    /// Loads collection `name` when another replica or shard on the same
    /// database created it and the follow loop has not seen it yet: the
    /// gateway creates a collection on every shard, and the second one must
    /// take the first one's collection rather than refuse it.
    async fn adopt(&self, name: &str) -> Result<()> {
        use std::sync::atomic::Ordering;
        let Some(id) = self.store.aliases().await?.get(name).copied() else {
            return Ok(());
        };
        let known = self.catalog.read().collections.get(&id).cloned();
        let coll = match known {
            Some(c) => c,
            None => {
                let Some(row) = self
                    .store
                    .collections()
                    .await?
                    .into_iter()
                    .find(|r| r.id == id)
                else {
                    return Ok(());
                };
                let seq = self
                    .store
                    .write_seqs()
                    .await?
                    .get(&id)
                    .copied()
                    .unwrap_or(0);
                let coll = self.load_collection(row).await?;
                coll.seen_seq.store(seq, Ordering::SeqCst);
                tracing::info!(collection = %name, vectors = coll.mem.read().len(), "loaded a collection another replica or shard created");
                coll
            }
        };
        let mut cat = self.catalog.write();
        cat.collections.insert(id, coll);
        cat.aliases.insert(name.to_string(), id);
        Ok(())
    }

    pub fn collections(&self) -> Vec<(String, Arc<Collection>)> {
        let cat = self.catalog.read();
        let mut out: Vec<(String, Arc<Collection>)> = cat
            .aliases
            .iter()
            .filter_map(|(a, id)| cat.collections.get(id).map(|c| (a.clone(), c.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let _catalog = self.creating.lock().await;
        let coll = self.resolve(name)?;
        self.drop_collection(&coll).await
    }

    /// Deletes `coll` and every name pointing at it. The caller holds
    /// `creating`, so that no create or follow interleaves.
    async fn drop_collection(&self, coll: &Arc<Collection>) -> Result<()> {
        let _w = coll.write.lock().await;
        self.store.delete_collection(coll.row.id).await?;
        coll.retire();
        let mut cat = self.catalog.write();
        cat.aliases.retain(|_, id| *id != coll.row.id);
        cat.collections.remove(&coll.row.id);
        Ok(())
    }

    pub async fn get_image(&self, name: &str, id: u64, with_blobs: bool) -> Result<StoredImage> {
        let coll = self.resolve(name)?;
        self.store
            .get_image(coll.row.id, id, with_blobs)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "image {id} is not in collection {}",
                    cbir_api::names::quoted(name)
                ))
            })
    }

    pub fn stats(&self, name: &str) -> Result<CollectionStats> {
        let coll = self.resolve(name)?;
        let mem = coll.mem.read();
        let mut partitions: Vec<PartitionStat> = mem
            .partitions()
            .into_iter()
            .map(|p| PartitionStat {
                class: p.class,
                count: p.len as u64,
                bytes: p.bytes as u64,
            })
            .collect();
        partitions.sort_by_key(|p| p.class);
        Ok(CollectionStats {
            alias: name.to_string(),
            count: mem.len() as u64,
            bytes: mem.bytes() as u64,
            partitions,
            row: coll.row.clone(),
        })
    }
}
